"""runtime.worker.server: what a handler returns or raises that the instance cannot take as it is becomes a
FunctionError at once, and the instance serves on (its other requests untouched)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from framework.errors import FunctionError
from framework.runtime import Runtime
from framework.runtime.worker.watchdog import MAX_MESSAGE
from tests.runtime.conftest import SpecFactory, call, until
from tests.support import write_project

ODD = """
import asyncio, dataclasses, datetime, os

class BadTZ(datetime.tzinfo):
    def utcoffset(self, dt):
        raise RuntimeError("tz boom")
    def dst(self, dt):
        return None

@dataclasses.dataclass(slots=True)
class Unset:
    x: int

class Meta(type):
    @property
    def __name__(cls):
        raise RuntimeError("name boom")

class WeirdName(Exception, metaclass=Meta):
    pass

async def odd(payload, ctx):
    if payload == "tz":
        return {"when": datetime.datetime(2020, 1, 1, tzinfo=BadTZ())}
    if payload == "slots":
        return [Unset.__new__(Unset)]
    if payload == "weird":
        raise WeirdName("odd")
    if isinstance(payload, dict) and "big" in payload:
        raise ValueError("e" * payload["big"]) from KeyError("k" * payload["big"])
    await asyncio.sleep(payload or 0)
    return os.getpid()
"""


@pytest.fixture
def odd_project(tmp_path: Path) -> Path:
    return write_project(tmp_path, "functions: []\n", {"odd": ODD})


async def _beside_a_bystander(
    runtime: Runtime, spec: SpecFactory, root: Path, payload: object
) -> FunctionError:
    """Start the instance, keep a 1 s request in it, send `payload`: its FunctionError, once the bystander
    got its result from the same instance."""
    s = spec("odd", module="odd", root=root, timeout=5, max=1)
    pid, _ = await call(runtime, s, 0)
    bystander = asyncio.ensure_future(call(runtime, s, 1))
    await until(lambda: runtime.inflight() == 1, message="the bystander in flight")
    t = time.monotonic()
    with pytest.raises(FunctionError) as failed:
        await call(runtime, s, payload)
    assert time.monotonic() - t < 2, "not answered at once"
    assert not bystander.done(), "the failure did not come at once"
    value, _ = await bystander
    assert value == pid, "the bystander was not served by the same instance"
    again, _ = await call(runtime, s, 0)
    assert again == pid
    return failed.value


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (
            "tz",
            r"datetime\.datetime with a tzinfo of type BadTZ whose UTC offset cannot be read: "
            r"RuntimeError: tz boom",
        ),
        ("slots", r"dataclass Unset: field 'x' cannot be read: AttributeError"),
    ],
    ids=["tzinfo-raises", "slot-never-set"],
)
async def test_a_result_that_crashed_orjson_is_function_error(
    runtime: Runtime, spec: SpecFactory, odd_project: Path, payload: str, why: str
) -> None:
    """1. An instance serves a request sleeping 1 s. 2. Meanwhile a request to it returns a datetime whose
    tzinfo's `utcoffset()` raises, or a `slots=True` dataclass whose field was never set (orjson's native
    code crashed the instance with SIGSEGV on both). Result: 2 is a FunctionError at once saying what is
    wrong; 1 gets its result from the same instance, which serves on."""
    error = await _beside_a_bystander(runtime, spec, odd_project, payload)
    assert "returned a value that is not JSON" in str(error)
    assert error.args and __import__("re").search(why, str(error)), str(error)


async def test_an_exception_type_whose_name_raises_is_function_error_at_once(
    runtime: Runtime, spec: SpecFactory, odd_project: Path
) -> None:
    """1. An instance serves a request sleeping 1 s. 2. Meanwhile a request to it raises an exception whose
    type's `__name__` raises (a metaclass property). Result: 2 is a FunctionError at once naming the type
    by the name it was created with, with its traceback (it was answered Timeout after the limit, its
    instance killed); 1 gets its result from the same instance."""
    error = await _beside_a_bystander(runtime, spec, odd_project, "weird")
    assert str(error).endswith("WeirdName: odd"), str(error)
    notes = "".join(getattr(error, "__notes__", []))
    assert "Traceback" in notes and "WeirdName: odd" in notes


async def test_a_huge_exception_message_is_cut_in_the_reply(
    runtime: Runtime, spec: SpecFactory, odd_project: Path
) -> None:
    """1. A handler raises an exception with a message of 8 MiB, from a cause with one of 8 MiB.
    Result: a FunctionError whose message keeps MAX_MESSAGE characters of it and says how many more were
    cut; its traceback holds both messages cut the same way (it held 16 MiB)."""
    big = 8 << 20
    s = spec("odd", module="odd", root=odd_project, timeout=10, max=1)
    with pytest.raises(FunctionError) as failed:
        await call(runtime, s, {"big": big})
    cut = f"… ({big - MAX_MESSAGE:,} more characters cut)"
    message = str(failed.value)
    whole = message.endswith("ValueError: " + "e" * MAX_MESSAGE + cut)  # not in the assertion: 8 MiB
    assert whole and len(message) < MAX_MESSAGE + 200, (len(message), message[-100:])
    tb = "".join(getattr(failed.value, "__notes__", []))
    cuts = tb.count("more characters cut)")  # the cause's too: its text is a repr, 2 characters longer
    assert "The above exception was the direct cause" in tb and "Traceback" in tb[-2 * MAX_MESSAGE :]
    assert cuts == 2 and len(tb) < 3 * MAX_MESSAGE, (cuts, len(tb))
