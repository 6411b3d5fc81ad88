"""The answering half of the Kafka source: combined replies and dead-letter copies, until acknowledged.

`reply_later` hands a reply to the producer and returns; the broker's acknowledgement (a done-callback)
marks the record done in its partition's offsets, so commits only ever pass acknowledged replies
(at-least-once) while the record's key chain already runs the next record. Replies of one key are handed
over in processing order and land in that order (see `ReplyProducer.submit`).

A reply refused for good (too large for the producer or the broker, a reply topic that does not exist)
goes to the default reply topic instead. When that refuses it too, the event has failed, since it cannot be
answered as it is: it is copied to the dead-letter topic like any failed event (`faas_error` says why) and
answered with a small `ok: false` reply naming the listener with the largest result. Only when even that
reply is refused is the event left without one (an error is logged): then no reply can get through at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from framework.errors import FunctionError
from framework.invoker import EventReply
from framework.kafka import cloudevents
from framework.kafka.deadletter import DEADLETTER_ERROR, failed_headers, trimmed, with_short_error
from framework.sources.kafka.offsets import OffsetTracker, PartitionOffsets
from framework.sources.kafka.replies import PermanentSendError, ReplyProducer

if TYPE_CHECKING:
    from framework.observe.metrics import Metrics
    from framework.settings import Settings

log = logging.getLogger("faas.kafka")


def _encoded(reply: EventReply, correlation_id: str | None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A reply's value and headers: its JSON, in the trace it answers (`ce_traceparent`, `ce_tracestate`)."""
    return reply.to_json(), cloudevents.reply_headers(correlation_id, reply.traceparent, reply.tracestate)


class ReplyOutbox:
    """Sends the replies and dead-letter copies of one Kafka source through its `ReplyProducer`."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        sender: ReplyProducer,
        broker_away: Callable[[], float | None],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sender = sender
        self._broker_away = broker_away
        self.unacked = 0
        """Replies handed over and not acknowledged yet: their records still hold room in the source."""
        self.on_release: Callable[[], None] | None = None
        """Called whenever a reply stops holding room (acknowledged, or given up)."""
        self._fallbacks: set[asyncio.Task[None]] = set()
        self._replied = {ok: metrics.events_replied.labels(str(ok).lower()) for ok in (True, False)}

    async def reply_later(
        self,
        part: PartitionOffsets,
        record: ConsumerRecord[bytes, bytes],
        event: cloudevents.Event | cloudevents.BadRecord,
        reply: EventReply,
    ) -> None:
        """Hand `reply` to the producer; `part.done(record.offset)` once the broker acknowledged it."""
        topic = event.replyto or self.settings.replies_topic
        value, headers = _encoded(reply, event.id)
        gone = None if event.replyto is None else self._missing_topic
        acked = await self.sender.submit(topic, value, record.key, headers, permanent_if=gone)
        self.unacked += 1
        part.acking += 1
        acked.add_done_callback(functools.partial(self._acked, part, record, event, reply))

    def _acked(
        self,
        part: PartitionOffsets,
        record: ConsumerRecord[bytes, bytes],
        event: cloudevents.Event | cloudevents.BadRecord,
        reply: EventReply,
        acked: asyncio.Future[None],
    ) -> None:
        if acked.cancelled():  # given up (consumer failure, stop): stays uncommitted, the group redoes it
            self._release(part)
        elif acked.exception() is None:
            self._replied[reply.ok].inc()
            self._release(part)
            part.done(record.offset)
        else:  # refused for good: the fallback of `reply` (the default topic, or dropped) decides
            why = acked.exception()
            task = asyncio.get_running_loop().create_task(self._fall_back(part, record, event, reply, why))
            self._fallbacks.add(task)
            task.add_done_callback(self._fallbacks.discard)

    async def _fall_back(
        self,
        part: PartitionOffsets,
        record: ConsumerRecord[bytes, bytes],
        event: cloudevents.Event | cloudevents.BadRecord,
        reply: EventReply,
        why: BaseException | None,
    ) -> None:
        try:
            if self._falls_back(event.replyto, event.id, why):
                await self.reply(None, record.key, reply, event.id, record, asked=event.replyto)
            else:
                await self._refused(record, reply, why)
        finally:
            self._release(part)
        part.done(record.offset)  # not reached on cancellation

    def _release(self, part: PartitionOffsets) -> None:
        self.unacked -= 1
        part.acking -= 1
        if self.on_release is not None:
            self.on_release()

    def cancel(self) -> None:
        """Give up on replies not acknowledged yet (their records stay uncommitted: redone by the group)."""
        for task in list(self._fallbacks):
            task.cancel()
        self.sender.cancel_retries()

    async def settle(
        self, tracker: OffsetTracker[TopicPartition], tps: list[TopicPartition] | None, deadline: float
    ) -> None:
        """Wait until the replies handed over for `tps` are acknowledged, up to `deadline` (monotonic;
        at least one second, so a drain that used its whole time still lets sent replies land)."""
        deadline = max(deadline, time.monotonic() + 1.0)
        while tracker.acking(tps) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # rare (rebalance, stop): polling beats wiring an event per ack

    async def reply(
        self,
        replyto: str | None,
        key: bytes | None,
        reply: EventReply,
        event_id: str | None,
        record: ConsumerRecord[bytes, bytes] | None = None,
        asked: str | None = None,
    ) -> None:
        """Send `reply` and wait for its acknowledgement. With the event's `record`, a reply the default
        topic refuses for good fails the event (`_refused`); without it, it is dropped with an error.
        `asked`: the caller's reply topic, when this is the default topic standing in for it (its refusal
        of the reply is why): the failure reply goes there, where the caller waits."""
        topic = replyto or self.settings.replies_topic
        value, headers = _encoded(reply, event_id)
        # A caller's reply topic that does not exist (and is not auto-created) times out while the broker
        # answers: that is permanent. While the broker is away, everything is retried.
        gone = None if replyto is None else self._missing_topic
        try:
            await self.sender.send(topic, value, key, headers, permanent_if=gone)
        except PermanentSendError as exc:
            if self._falls_back(replyto, event_id, exc):
                await self.reply(None, key, reply, event_id, record, asked=replyto)
            elif record is not None:
                await self._refused(record, reply, exc, asked)
            else:
                log.error("reply to event %s dropped: %s", event_id, exc)
            return
        self._replied[reply.ok].inc()

    def _falls_back(self, replyto: str | None, event_id: str | None, why: BaseException | None) -> bool:
        """A reply refused for good: True when the caller's own reply topic refused it, so the default
        topic gets it (logged); False when that was the default topic."""
        default = self.settings.replies_topic
        if replyto is None or replyto == default:
            return False
        log.warning("reply topic %s refused the reply to %s (%s): using %s", replyto, event_id, why, default)
        return True

    async def _refused(
        self,
        record: ConsumerRecord[bytes, bytes],
        reply: EventReply,
        why: BaseException | None,
        asked: str | None = None,
    ) -> None:
        """The default reply topic refused `reply` for good: the event failed. It is dead-lettered (unless
        it failed already, and so was) and answered `ok: false`, blaming the listener that failed (its error
        made the reply too large) or else the one with the largest result. That small reply goes to the
        caller's reply topic (`asked`) when the event named one, which refused only the large reply (the
        caller waits there), else to the default; a refusal of it drops it (`reply` without the record)."""
        tried = (
            self.settings.replies_topic if asked is None else f"{asked} nor to {self.settings.replies_topic}"
        )
        message = f"the reply could not be produced to {tried}: {why}"
        log.error("reply to event %s refused (%s): the event fails", reply.id, why)
        spec = max(reply.results, key=lambda done: len(done[1].result))[0] if reply.results else None
        failed = EventReply.failed(reply.id, reply.event, FunctionError(message), spec)
        if reply.error is not None and reply.error.get("function") and failed.error is not None:
            failed.error["function"], failed.error["uuid"] = reply.error["function"], reply.error["uuid"]
        failed.traceparent, failed.tracestate, failed.attempts = (
            reply.traceparent,
            reply.tracestate,
            reply.attempts,
        )
        if reply.ok:
            function = None if spec is None else spec.name
            marked = failed_headers(
                list(record.headers or ()), "FunctionError", message, function, reply.attempts
            )
            await self.deadletter(record.key, record.value, marked, "failed")
        await self.reply(asked, record.key, failed, reply.id)

    async def deadletter(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
        reason: str = "bad_event",
    ) -> None:
        """Copy a record to the dead-letter topic and wait for the acknowledgement; `reason` is the
        metric's label: `bad_event` or `failed`."""
        topic = self.settings.deadletter_topic
        try:
            await self.sender.send(topic, value, key, headers)
        except PermanentSendError as exc:
            # E.g. bigger than the topic allows. A long error message goes first (the event must stay
            # replayable), then the value: the key, headers and the reason are kept at least.
            short = with_short_error(headers)
            sent = False
            if short is not None:
                with contextlib.suppress(PermanentSendError):
                    await self.sender.send(topic, value, key, short)
                    sent = True
            if sent:
                log.warning("dead-letter copy refused (%s): sent with its faas_error cut short", exc)
            else:
                log.error("dead-letter copy refused (%s): sending it without its value", exc)
                marked = [*(short or headers), (DEADLETTER_ERROR, str(exc).encode())]
                try:
                    await self.sender.send(topic, None, key, marked)
                except PermanentSendError as again:  # its headers (or key) alone are over the limit
                    if not await self._stripped(topic, key, short or headers, again):
                        return  # the event is answered all the same: its reply is small
        self.metrics.events_deadlettered.labels(reason).inc()

    async def _stripped(
        self, topic: str, key: bytes | None, headers: list[tuple[str, bytes | None]], exc: Exception
    ) -> bool:
        """The last resorts for a dead-letter copy: without its large headers (`trimmed`), then without its
        key too. False when even that is refused: the copy is given up, and said so."""
        marked = trimmed(headers, str(exc))
        for kept_key in (key, None) if key is not None else (None,):
            try:
                await self.sender.send(topic, None, kept_key, marked)
            except PermanentSendError as again:
                exc = again
                continue
            log.error(
                "dead-letter copy refused (%s): sent without its value, large headers%s",
                exc,
                "" if kept_key is not None else " and key",
            )
            return True
        log.error(
            "dead-letter copy refused even without its value, large headers and key (%s): none sent", exc
        )
        return False

    def _missing_topic(self, exc: BaseException) -> bool:
        return isinstance(exc, KafkaTimeoutError) and self._broker_away() is None
