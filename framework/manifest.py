"""`functions.yaml`: the models of DESIGN.md section 2 and loading with positions.

(Positions, every-error reporting and round-trip edits are filled in by the manifest work.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

State = Literal["draft", "productive", "undeployed"]


class ScheduleSpec(BaseModel):
    """One cron entry: `cron` (5 fields, or 6 with seconds last), IANA `timezone`, any JSON `payload`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str
    timezone: str = "UTC"
    payload: Any = None


class InstancesSpec(BaseModel):
    """Per-node instance limits of one function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max: int = Field(4, ge=1)
    """Instances of this function per node."""
    concurrency: int = Field(100, ge=1)
    """In-flight requests per instance before another instance starts."""
    idle_timeout: float = Field(300, gt=0)
    """Seconds an idle instance lives before it goes cold."""
    queue: int = Field(1000, ge=0)
    """Requests that may wait when every instance is full; beyond that: Overloaded."""


class FunctionSpec(BaseModel):
    """One entry of `functions:`. `root` is the manifest's folder, where `handler` is imported from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    uuid: str
    handler: str
    state: State = "draft"
    events: tuple[str, ...] = ()
    timeout: float = Field(30, gt=0, le=30)
    """Seconds, counted from when the instance receives the request."""
    env: dict[str, str] = Field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    keep_warm: str | None = None
    instances: InstancesSpec = Field(default_factory=InstancesSpec)
    root: Path = Path(".")

    @property
    def productive(self) -> bool:
        return self.state == "productive"


class Manifest(BaseModel):
    """The whole file, with `defaults` already merged into each function."""

    model_config = ConfigDict(frozen=True)

    path: Path
    functions: tuple[FunctionSpec, ...] = ()
