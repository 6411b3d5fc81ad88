"""The collector settings of long-running processes (`framework/heap.py`)."""

from __future__ import annotations

import subprocess
import sys


def test_settle_freezes_what_exists_and_raises_the_young_threshold() -> None:
    """Run in a process of its own: the settings are process-wide.

    1. Make a cycle of garbage, then call `settle()`.
    2. Make a new cycle of garbage after it and collect.
    Result: the start-up garbage was collected first (it is not frozen), what lived is frozen, the young
    threshold is `YOUNG_THRESHOLD`, and a cycle made later is still collected."""
    code = """
import gc, weakref
from framework import heap
class Node: pass
a = Node(); a.me = a; dead = weakref.ref(a); del a
kept = [Node() for _ in range(100)]
heap.settle()
assert dead() is None, "start-up garbage frozen instead of freed"
assert gc.get_freeze_count() > 0
assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
b = Node(); b.me = b; later = weakref.ref(b); del b
gc.collect()
assert later() is None, "a cycle made after settle() was not collected"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_settle_without_collecting_still_freezes() -> None:
    code = """
import gc
from framework import heap
heap.settle(collect=False)
assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
