"""Fakes for the HTTP app's unit tests: a Node-like object over the real Invoker and Registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import httpx
from starlette.applications import Starlette

from framework.control.registry import Registry
from framework.control.spec import FunctionSpec, Manifest, ScheduleSpec
from framework.errors import FaasError, FunctionError, InstanceCrashed, Overloaded, Timeout
from framework.invoker import Invoker
from framework.observe.metrics import Metrics
from framework.observe.records import InvocationRecords
from framework.settings import Settings
from framework.sources.http.app import create_app
from framework.types import Invocation, InvokeResult

ECHO = "aaaaaaaa-0000-4000-8000-000000000001"
BOOM = "aaaaaaaa-0000-4000-8000-000000000002"
DRAFT = "aaaaaaaa-0000-4000-8000-000000000003"
UNKNOWN = "aaaaaaaa-0000-4000-8000-0000000000ff"
FAILING: dict[str, FaasError] = {
    "boom": FunctionError("ValueError: kaboom"),
    "busy": Overloaded("queue full"),
    "crash": InstanceCrashed("instance died"),
    "late": Timeout("past 1 s"),
}
UUIDS = {name: f"bbbbbbbb-0000-4000-8000-00000000000{i}" for i, name in enumerate(FAILING)}
LIMIT = 1024


class FakeRuntime:
    """Answers `echo` with `{"echo": <payload as sent>}`, the names in FAILING with their error."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.bug: Exception | None = None

    async def invoke(self, spec: FunctionSpec, inv: Invocation) -> InvokeResult:
        self.payloads.append(inv.payload)
        if self.bug is not None:
            raise self.bug
        if spec.name in FAILING:
            raise FAILING[spec.name]
        # Splice the payload: a re-encoding anywhere on the way would show in the bytes.
        return InvokeResult(inv.invocation_id, b'{"echo":' + inv.payload + b"}", 1.23456, True, "i-1")

    def instance_count(self, name: str) -> int:
        return 2 if name == "echo" else 0


class FakeScheduler:
    def status(self, name: str) -> list[dict[str, Any]]:
        entry = {
            "cron": "* * * * *",
            "timezone": "UTC",
            "payload": None,
            "next_fire": "2030-01-01T00:00:00Z",
            "last": None,
        }
        return [entry] if name == "echo" else []


class FakeNode:
    """What the HTTP source reads of a Node."""

    def __init__(self, keys: str = "", scheduler: FakeScheduler | None = None) -> None:
        specs = [
            FunctionSpec(
                name="echo",
                uuid=ECHO,
                handler="f:h",
                state="productive",
                events=("ping",),
                schedules=(ScheduleSpec(cron="* * * * *"),),
            ),
            FunctionSpec(name="drafty", uuid=DRAFT, handler="f:h", events=("ping",)),
            *(
                FunctionSpec(name=n, uuid=UUIDS[n], handler="f:h", state="productive", events=(f"fail.{n}",))
                for n in FAILING
            ),
        ]
        self.settings = Settings(api_keys=keys, max_payload_bytes=LIMIT)
        self.metrics = Metrics()
        self.runtime = FakeRuntime()
        registry = Registry(Manifest(path=Path("functions.yaml"), functions=tuple(specs)))
        self.invoker = Invoker(cast(Any, self.runtime), registry, self.metrics)
        self.scheduler = scheduler
        self.records = InvocationRecords(self.settings, self.metrics)
        self.ready = True

    @property
    def registry(self) -> Registry:
        return self.invoker.registry

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {
            "ready": self.ready,
            "reasons": [] if self.ready else ["kafka"],
            "functions": 6,
            "manifest_errors": ["functions.yaml:3:5: bad"],
        }


def app_for(node: FakeNode) -> Starlette:
    return create_app(
        node.settings, node.invoker, node.scheduler, node, node.metrics, invocations=node.records
    )


def client_for(node: FakeNode) -> httpx.AsyncClient:
    app = app_for(node)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


def err(r: httpx.Response) -> str:
    return str(r.json()["error"]["type"])
