"""Remote files under faults an operator meets: stalled servers, 503s at open, refused connections,
weak ETags, servers that ignore ``Range``, threads sharing one opened tree, Ctrl-C mid-download.

Every server is the loopback one (`tests/loopback.py`); timeouts are set short through fsspec's
configuration, as a user would set them.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import threading
import time

import fsspec.config
import pytest
import safetensors.torch
import torch
from loopback import LoopbackServer

import structload as sl
from helpers import Net, assert_unchanged, randomized, snapshot
from structload.sources._io import http as _http
from structload.sources._io import remote as _remote

#: every test here: retries without waiting, and `served` (a loopback HTTP server), from conftest.py
pytestmark = pytest.mark.usefixtures("quick_retries")


@pytest.fixture
def short_timeouts(monkeypatch):
    """Every HTTP request of these tests gives up after 0.3 s of silence (the default is 20 s)."""
    monkeypatch.setitem(fsspec.config.conf, "http", {"timeout": 0.3})


def publish(server: LoopbackServer, name: str, state: dict) -> str:
    safetensors.torch.save_file(state, str(server.root / name))
    return f"{server.url}/{name}"


def state_of(seed: int) -> dict:
    return randomized(Net(n=2), seed).state_dict()


def loaded_exactly(model, state: dict) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_server_stalled_at_open_is_a_source_error_in_bounded_time(served, short_timeouts, monkeypatch):
    monkeypatch.setattr(_remote, "RETRIES", 1)  # two lookups (HEAD, then fsspec's GET), each timing out
    url = publish(served, "net.safetensors", state_of(1))
    served.head_faults = ["stall"] * 20
    began = time.monotonic()
    with pytest.raises(sl.SourceError) as info:
        sl.open(url)
    assert str(info.value).startswith(url) and "timed out" in str(info.value).lower()
    assert "no such file" not in str(info.value)
    assert time.monotonic() - began < 8  # 2 attempts of HEAD then GET, 0.3 s each


def test_a_server_stalled_mid_load_ends_the_load_naming_the_url(served, short_timeouts):
    url = publish(served, "net.safetensors", state_of(1))
    tree = sl.open(url)  # header read
    served.faults = ["stall"] * 20
    model = randomized(Net(n=2), 2)
    before = snapshot(model)
    began = time.monotonic()
    with pytest.raises(sl.SourceError) as info:
        sl.load(model, tree)
    assert time.monotonic() - began < 10
    assert url in str(info.value) and "timed out" in str(info.value).lower() and "5 attempts" in str(info.value)
    assert info.value.report.loaded == []
    assert_unchanged(model, before)


def test_a_body_stalled_midway_is_retried(served, short_timeouts):
    state = state_of(1)
    url = publish(served, "net.safetensors", state)
    tree = sl.open(url)
    served.faults = ["stall-body"]  # headers and half the body, then silence
    model = randomized(Net(n=2), 2)
    assert sl.load(model, tree).ok and loaded_exactly(model, state)
    assert served.faults == []


def test_retries_stop_once_the_total_time_is_spent(served, short_timeouts, monkeypatch):
    monkeypatch.setattr(_http, "TOTAL_SECONDS", 1.0)  # the default, 100 s, at this scale
    url = publish(served, "net.safetensors", state_of(1))
    tree = sl.open(url)
    served.faults = ["stall"] * 20
    began = time.monotonic()
    with pytest.raises(sl.SourceError, match=r"after [23] attempts"):
        sl.load(randomized(Net(n=2), 2), tree)
    assert time.monotonic() - began < 2.5


def test_the_default_timeouts_bound_a_stalled_load_under_two_minutes():
    timeout = _http.client_timeout()
    per_attempt = timeout.sock_connect + timeout.sock_read
    assert timeout.total is None and timeout.sock_read == _http.READ_SECONDS  # a long download is never cut
    assert _http.TOTAL_SECONDS + per_attempt <= 120 + 10  # at worst: the last retry starts in time
    assert _http.TOTAL_SECONDS <= 100


def test_503s_at_open_are_retried(served):
    state = state_of(1)
    url = publish(served, "net.safetensors", state)
    served.head_faults = ["503"] * 4  # two lookups fail in full (HEAD, then fsspec's GET)
    model = randomized(Net(n=2), 2)
    assert sl.load(model, url).ok and loaded_exactly(model, state)
    assert served.head_faults == []


def test_a_refused_connection_is_not_called_a_missing_file():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.safetensors"
    with pytest.raises(sl.SourceError) as info:
        sl.open(url)
    assert str(info.value).startswith(url) and "no such file" not in str(info.value)
    assert "attempts" in str(info.value)


def test_only_a_real_404_is_no_such_file(served):
    with pytest.raises(sl.SourceError, match="no such file or directory"):
        sl.open(f"{served.url}/nothing.safetensors")


def test_weak_etags_load_and_still_catch_a_replaced_file(served):
    served.weak_etags = True
    state = state_of(1)
    url = publish(served, "net.safetensors", state)
    model = randomized(Net(n=2), 2)
    assert sl.load(model, url).ok and loaded_exactly(model, state)
    tree = sl.open(url)
    publish(served, "net.safetensors", state_of(3))
    model = randomized(Net(n=2), 2)
    before = snapshot(model)
    with pytest.raises(sl.SourceError, match="changed") as info:
        sl.load(model, tree)
    assert url in str(info.value) and info.value.report.loaded == []
    assert_unchanged(model, before)


def test_a_server_ignoring_range_is_refused_with_the_reason(served):
    served.ignore_range = True
    url = publish(served, "net.safetensors", state_of(1))
    with pytest.raises(sl.SourceError, match="ignored the byte range.*STRUCTLOAD_RANGE_IGNORED=read-once"):
        sl.open(url)


def test_a_server_ignoring_range_is_read_once_when_asked(served, monkeypatch):
    monkeypatch.setenv("STRUCTLOAD_RANGE_IGNORED", "read-once")
    served.ignore_range = True
    state = state_of(1)
    url = publish(served, "net.safetensors", state)
    model = randomized(Net(n=2), 2)
    assert sl.load(model, url).ok and loaded_exactly(model, state)
    assert served.served == os.path.getsize(served.root / "net.safetensors")  # the body, once
    assert sum(1 for method, _, _ in served.requests if method == "GET") == 1


def test_an_opened_url_shared_by_four_threads_loads_in_each(served, monkeypatch):
    monkeypatch.setattr(_remote, "COALESCE_GAP", -1)  # many pieces: the prefetch state is busy
    state = {f"w{i}": torch.randn(2000) for i in range(12)}
    tree = sl.open(publish(served, "many.safetensors", state))
    outcomes: list = []

    def load():
        dst = {k: torch.zeros(2000) for k in state}
        try:
            for _ in range(3):
                sl.load(dst, tree)
            outcomes.append(all(torch.equal(dst[k], v) for k, v in state.items()))
        except BaseException as error:
            outcomes.append(error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [True] * 4


def sharded(served, state: dict, shards: int = 3) -> str:
    names = list(state)
    folder = served.root / "sharded"
    folder.mkdir()
    weight_map = {}
    for i in range(shards):
        part = {k: state[k] for k in names[i::shards]}
        safetensors.torch.save_file(part, str(folder / f"s{i}.safetensors"))
        weight_map.update(dict.fromkeys(part, f"s{i}.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return f"{served.url}/sharded/model.safetensors.index.json"


def test_a_sharded_load_requests_only_the_shards_it_needs(served):
    state = state_of(1)
    url = sharded(served, state)
    model = randomized(Net(n=2), 2)
    assert sl.load(model, url, include="head").ok
    weight_map = json.loads((served.root / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {weight_map[k] for k in state if k.startswith("head.")}
    requested = {path.rsplit("/", 1)[-1] for _, path, _ in served.requests} - {"model.safetensors.index.json"}
    assert requested == needed


def test_inspecting_a_sharded_url_fetches_only_the_headers(served):
    state = state_of(1)
    url = sharded(served, state)
    headers = 0
    for shard in (served.root / "sharded").glob("*.safetensors"):
        with open(shard, "rb") as f:
            headers += 8 + int.from_bytes(f.read(8), "little")
    index = (served.root / "sharded" / "model.safetensors.index.json").stat().st_size
    assert sorted(sl.inspect(url)) == sorted(state)
    assert served.served <= index + headers


@pytest.mark.parametrize("when", ["opening", "writing"])
def test_ctrl_c_during_an_http_load_gets_the_note(served, monkeypatch, when):
    monkeypatch.setattr(_remote, "WINDOW_PIECES", 0)  # one request per tensor, in order
    monkeypatch.setattr(_remote, "COALESCE_GAP", -1)
    state = {f"w{i}": torch.full((300,), float(i)) for i in range(6)}
    url = publish(served, "net.safetensors", state)

    def ctrl_c():  # SIGINT to the main thread while the load waits for this answer
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.2)

    if when == "opening":
        served.head_faults = [ctrl_c]  # the load's own lookup of the URL
    else:
        served.faults = [None, None, None, ctrl_c]  # length, header, w0, then w1
    dst = {k: torch.zeros(300) for k in state}
    with pytest.raises(KeyboardInterrupt) as info:
        sl.load(dst, url)
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith("structload: the load was interrupted"), notes
    if when == "opening":
        assert notes[0].endswith("before writing anything; the destination is unchanged")
        assert not any(t.any() for t in dst.values())
    else:
        assert "the destination is partly loaded" in notes[0] and "'w1' may be partly written" in notes[0]


def test_http_loads_leave_no_reference_cycles(served):
    url = publish(served, "net.safetensors", state_of(1))
    for _ in range(3):
        sl.load(Net(n=2), url)
    gc.collect()
    gc.disable()  # whatever a load leaves in a cycle stays until collect(), which keeps it (DEBUG_SAVEALL)
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            sl.load(Net(n=2), url)
        gc.collect()
        # only structload's own objects: in a full run, threads of earlier tests (fsspec's event
        # loop still retrying a stalled server) may leave cycles of their own while the collector waits
        ours = [o for o in gc.garbage if (getattr(type(o), "__module__", "") or "").startswith("structload")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []
