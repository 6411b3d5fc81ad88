"""Inside an instance: keep what each invocation logs, for its invocation record (DESIGN.md section 13).

Every line an instance logs (`ctx.log`, any logger, stdout, stderr) already travels to the node on the log
channel, tagged with the invocation the running code serves (`current_invocation`, a contextvar set per
request task and copied into the handler's thread). `CapturingSender` sits in front of that channel: the one
hook point. A line tagged with an invocation that is open here is also kept for that invocation; the server
puts the kept lines in the invocation's record (`observe/record_json.py`), which travels with its REPLY
frame, so the node has them the moment the invocation ends, with no second channel to join. An invocation
is open only when the node asked for its record (records on).

The node keeps a second `LogCapture` per instance (`runtime/handle.py`), fed by the same lines as they
arrive on the log channel, for the invocations that get no REPLY: an instance that exits or is killed
mid-invocation takes its own copy with it, and the lines it sent before are then what the node's record of
that crash keeps.

A line printed by a thread carries the invocation of the code that started the thread
(`thread_context.py`): one started at import carries none, so its lines reach the node's log but no
record, and one another invocation started is that invocation's. Lines logged after an invocation ended
(a `def` handler's thread still running past its time limit) are not kept either.

The caps are `LogCapture`'s (`observe/log_capture.py`).
"""

from __future__ import annotations

from framework.observe.log_capture import LogCapture
from framework.runtime.protocol import BlockingSender, FrameKind, Header


def clean_text(text: str) -> str:
    """`text` as valid UTF-8: lone surrogates (bytes decoded with `surrogateescape`, binary garbage) become
    `?`. The frame encoder refuses them, which would fail the handler's `print`."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


class CapturingSender(BlockingSender):
    """The instance's log channel, keeping each LOG frame's line for its invocation on the way out."""

    def __init__(self, inner: BlockingSender, capture: LogCapture) -> None:
        self._inner = inner
        self.capture = capture

    def send(self, kind: int, header: Header, tail: bytes = b"") -> None:
        if kind == FrameKind.LOG:
            msg = header.get("msg")
            if isinstance(msg, str):
                header["msg"] = msg = clean_text(msg)
                inv = header.get("inv")
                if inv is not None:
                    self.capture.add(inv, header.get("lvl", 20), msg)
        self._inner.send(kind, header, tail)
