"""`thread_context.install` (framework/runtime/worker/thread_context.py), in a process of its own: it
patches `threading` for the whole process, as it does in an instance."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import contextvars, json, threading
    from concurrent.futures import ThreadPoolExecutor
    from framework.runtime.worker import thread_context

    var = contextvars.ContextVar("var", default="none")
    seen = []

    def look(where):
        seen.append((where, var.get()))

    def started(where):
        t = threading.Thread(target=look, args=(where,))
        t.start()
        t.join()

    started("before install")
    thread_context.install()
    thread_context.install()  # a second install changes nothing
    started("outside")
    pool = ThreadPoolExecutor(1)
    for value in ("a", "b"):
        token = var.set(value)
        started("thread " + value)
        pool.submit(look, "pool " + value).result()
        var.reset(token)
        var.set("changed after start")  # a copy: what the starter sets later is not seen
    pool.submit(look, "pool outside").result()
    timer = threading.Timer(0, look, args=("timer",))  # a Thread subclass with a run of its own
    timer.start()
    timer.join()
    print(json.dumps(seen))
    print(hasattr(threading.Thread.start.__wrapped__, "__wrapped__"), ThreadPoolExecutor.submit.__name__)
    """
)


def test_threads_and_pool_calls_carry_the_context_of_who_starts_them() -> None:
    """1. A thread started before `install`. 2. `install` twice. 3. Threads and pool calls started with a
    context variable unset, set to a, set to b (the pool's one thread started by the call under a).
    Result: before install the thread sees nothing; after, each thread and each pool call sees the value
    of its starter at the moment it started (b's pool call too, on the thread a's started), and a second
    install wraps nothing twice."""
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen, names = r.stdout.splitlines()
    assert [tuple(pair) for pair in json.loads(seen)] == [
        ("before install", "none"),
        ("outside", "none"),
        ("thread a", "a"),
        ("pool a", "a"),
        ("thread b", "b"),
        ("pool b", "b"),
        ("pool outside", "changed after start"),
        ("timer", "changed after start"),
    ]
    assert names == "False submit_in_context"
