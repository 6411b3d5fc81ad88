"""`thread_context.install` (framework/runtime/worker/thread_context.py), in a process of its own: it
patches `threading` for the whole process, as it does in an instance."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import contextvars, json, threading, weakref
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
    # A pool thread started by a call under c serves every later call: its own code (a done-callback) is
    # no one's.
    lazy, called = ThreadPoolExecutor(1), threading.Event()
    token = var.set("c")
    job = lazy.submit(called.wait, 10)
    var.reset(token)
    ran = threading.Event()
    job.add_done_callback(lambda _: (look("done callback"), ran.set()))
    called.set()
    ran.wait(10)
    # A finished thread is freed with its context copy at once, not left to the garbage collector.
    t = threading.Thread(target=look, args=("freed",))
    gone = weakref.ref(t)
    t.start()
    t.join()
    del t
    seen.append(("freed", str(gone() is None)))
    try:
        timer.start()
    except RuntimeError:
        seen.append(("second start", str("run" in vars(timer))))
    print(json.dumps(seen))
    print(hasattr(threading.Thread.start.__wrapped__, "__wrapped__"), ThreadPoolExecutor.submit.__name__)
    """
)


def test_threads_and_pool_calls_carry_the_context_of_who_starts_them() -> None:
    """1. A thread started before `install`. 2. `install` twice. 3. Threads and pool calls started with a
    context variable unset, set to a, set to b (the pool's one thread started by the call under a).
    4. A done-callback run by a pool thread a call under c started. 5. A finished thread dropped. 6. A
    thread started twice.
    Result: before install the thread sees nothing; after, each thread and each pool call sees the value
    of its starter at the moment it started (b's pool call too, on the thread a's started); the
    done-callback sees nothing (pool threads start empty); the thread is freed once dropped (no cycle
    through its wrapper); the second start raises with nothing wrapped; a second install wraps nothing
    twice."""
    root = Path(__file__).resolve().parents[3]  # the project: `framework` is imported from there
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=root)
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
        ("done callback", "none"),
        ("freed", "changed after start"),
        ("freed", "True"),
        ("second start", "False"),
    ]
    assert names == "False submit_in_context"


RAISING = textwrap.dedent(
    """
    import contextvars, sys, threading
    from framework.runtime.worker import thread_context

    var = contextvars.ContextVar("var", default="none")
    seen = []
    threading.excepthook = lambda a: seen.append((var.get(), type(a.exc_value).__name__, a.thread.name))
    thread_context.install()

    def fail():
        raise ValueError("thread died")

    def leave():
        sys.exit(3)

    var.set("inv-1")
    for target, name in ((fail, "failing"), (leave, "leaving")):
        t = threading.Thread(target=target, name=name)
        t.start()
        t.join()
    print(seen)
    """
)


def test_what_a_thread_raises_is_reported_in_its_context() -> None:
    """1. Under a context variable set to inv-1, a thread raises ValueError, another SystemExit.
    Result: `threading.excepthook` gets each once, with the thread, while the variable reads inv-1 (it was
    called after `run`, outside the thread's context: a traceback printed there was no invocation's)."""
    root = Path(__file__).resolve().parents[3]
    r = subprocess.run([sys.executable, "-c", RAISING], capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[('inv-1', 'ValueError', 'failing'), ('inv-1', 'SystemExit', 'leaving')]"
