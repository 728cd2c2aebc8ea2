"""Hypothesis-driven fuzzing of the safetensors and torch-file readers.

CI runs a bounded number of examples. For a longer run:

    STRUCTLOAD_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/fuzz -q

or, with atheris installed, the coverage-guided harness:

    .venv/bin/python tests/fuzz/atheris_readers.py -max_total_time=600
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.readers import check_file_bytes, seeds

EXAMPLES = int(os.environ.get("STRUCTLOAD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SEEDS = seeds()


def test_every_seed_is_a_valid_checkpoint():
    assert len(SEEDS) >= 4
    for suffix, data in SEEDS:
        check_file_bytes(data, suffix)


@st.composite
def mutated(draw):
    suffix, data = draw(st.sampled_from(SEEDS))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "copy"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord('"'), ord("9")]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:  # copy a span elsewhere, as a corrupted write might
            length = draw(st.integers(1, 32))
            data[at : at + length] = data[draw(st.integers(0, len(data) - 1)) :][:length]
    return bytes(data), suffix


@FUZZ
@given(mutated())
def test_mutated_files_load_or_raise_source_error(case):
    data, suffix = case
    check_file_bytes(data, suffix)


headers = st.dictionaries(
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F64", "X9", 5]),
            "shape": st.lists(st.integers(-2, 6), max_size=3),
            "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3),
        }
    ),
    max_size=4,
)


@FUZZ
@given(headers, st.binary(max_size=96))
def test_arbitrary_safetensors_headers(header, payload):
    text = json.dumps(header).encode()
    check_file_bytes(len(text).to_bytes(8, "little") + text + payload, ".safetensors")
