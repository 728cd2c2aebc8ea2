"""A load leaves nothing behind for Python's cyclic garbage collector to scan (issue 13).

The collector is paused during a load; when it comes back, anything the load
allocated that is still alive sits in its youngest generation, and the next
allocation starts a collection over all of it: a pass proportional to the load.
"""

from __future__ import annotations

import gc

import torch.nn as nn

import structload as sl


def test_no_collection_over_what_the_load_allocated():
    source = nn.ModuleList(nn.Linear(2, 2) for _ in range(2500))  # 5,000 tensors
    model = nn.ModuleList(nn.Linear(2, 2) for _ in range(2500))
    state = source.state_dict()
    sl.load(model, state)  # warm up
    scanned: list[int] = []  # how many objects each young collection started during the load looks at

    def record(phase, info):
        if phase == "start" and info["generation"] == 0:
            scanned.append(len(gc.get_objects(generation=0)))

    gc.collect()
    gc.callbacks.append(record)
    try:
        report = sl.load(model, state)
    finally:
        gc.callbacks.remove(record)
    assert gc.isenabled() and len(report.loaded) == 5000
    assert all(n < 500 for n in scanned), scanned  # the report's few lists, not objects per tensor
