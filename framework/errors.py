"""The error hierarchy: one class per error type of the contract (DESIGN.md sections 4 and 5).

Every error a caller can see carries its contract `type` (the class name) and the HTTP `status` it maps to.
`ERRORS` is the one registry of them by name: statuses, the OpenAPI document and errors rebuilt from their
names (frames from instances, retry policies) all read it.
"""

from __future__ import annotations

from typing import ClassVar


class FaasError(Exception):
    """Base of every error the platform reports to a caller."""

    status: ClassVar[int] = 500
    attempts: int = 1
    """Attempts made when this error ended an invocation's retries (DESIGN.md section 15)."""
    cold_start: bool = False
    """Whether the invocation this error ended started its instance (its span's `faas.coldstart`)."""
    instance_id: str | None = None
    """The instance that held the invocation when it ended with this error; None: it reached none."""
    recorded: bool = False
    """Whether the invocation this error ended has a record (section 13): an `Overloaded` from a full
    queue has one; one refusing a request before it became an invocation (a stopping node's, for a body
    still arriving or a call it no longer starts) has none, and the HTTP source cannot tell them apart by
    type."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def type(self) -> str:
        """The contract's name for this error, e.g. `Timeout`."""
        return type(self).__name__

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class BadRequest(FaasError):
    """The HTTP body is not valid JSON."""

    status = 400


class Unauthorized(FaasError):
    """`FAAS_API_KEYS` is set and the request carries no valid bearer key."""

    status = 401


class Forbidden(FaasError):
    """A request a web page of another site made the browser send, or one for a host name the node does not
    serve (`sources/http/browsers.py`). Not in the contract, which is silent on browsers."""

    status = 403


class NotFound(FaasError):
    """Unknown UUID, or a function that is not productive."""

    status = 404


class PayloadTooLarge(FaasError):
    """A body or record over `FAAS_MAX_PAYLOAD_BYTES`."""

    status = 413


class Overloaded(FaasError):
    """The function is at its max instances and its queue is full, or a request waited too long in it."""

    status = 429


class FunctionError(FaasError):
    """The handler raised, or returned something that is not JSON."""

    status = 500


class InstanceCrashed(FaasError):
    """The instance holding the request died (or was killed) before answering."""

    status = 502


class Timeout(FaasError):
    """The handler ran past its function's `timeout`."""

    status = 504


class BadEvent(FaasError):
    """A Kafka record that is not a valid CloudEvent; it is answered and dead-lettered."""

    status = 400


class ManifestError(Exception):
    """`functions.yaml` is invalid: `errors` holds every `functions.yaml:LINE:COL: message` line found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


ERRORS: dict[str, type[FaasError]] = {
    cls.__name__: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        PayloadTooLarge,
        Overloaded,
        FunctionError,
        InstanceCrashed,
        Timeout,
        BadEvent,
    )
}
"""Every contract error type by its name."""

INVOCATION_ERRORS: tuple[str, ...] = ("FunctionError", "Timeout", "InstanceCrashed", "Overloaded")
"""The types an invocation can end with (a listener's chain error, a retry policy's `on`)."""


def status_of(error_type: str | None) -> int:
    """The HTTP status of a contract error type given by name (e.g. `Timeout` → 504); 500 if unknown."""
    cls = ERRORS.get(error_type or "")
    return 500 if cls is None else cls.status


def from_name(error_type: str, message: str) -> FaasError:
    """Rebuild an error from its contract name (unknown names become `FunctionError`)."""
    return ERRORS.get(error_type, FunctionError)(message)


_TYPE_NAME = type.__dict__["__name__"]
"""The `__name__` slot of every class, read past a metaclass that hides it behind a property of its own."""


def type_name(kind: type) -> str:
    """`kind.__name__` of a user's class (an exception's, a result's); when that raises or is not a str (a
    metaclass's property), the name the class was created with (a property cannot hide the slot itself)."""
    try:
        name = kind.__name__
    except BaseException:  # its metaclass's code: anything may come out of it
        name = None
    return name if type(name) is str else str(_TYPE_NAME.__get__(kind))
