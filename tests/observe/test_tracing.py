"""W3C trace context (DESIGN.md section 11): strict parsing, continuing a caller's trace, new spans."""

from __future__ import annotations

import re

import pytest

from framework.observe import tracing

T, S = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{T}-{S}-01"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{T.upper()}-{S}-01",  # upper case is not allowed
        f"00-{'0' * 32}-{S}-01",  # all-zero trace id
        f"00-{T}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{T}-{S}-01",  # version ff is invalid
        f"00-{T}-{S}-01-extra",  # version 00 has exactly four fields
        f"00-{T}-{S}-0",  # short flags
        f"00-{T[:-1]}g-{S}-01",  # not hex
        f"00_{T}_{S}_01",
        f"0-{T}-{S}-01",
        f"01-{T}-{S}-01x",  # a later version: more fields only after a dash
    ],
)
def test_malformed_traceparent_starts_a_new_trace(header: str | None) -> None:
    assert tracing.parse_traceparent(header) is None
    span = tracing.start(header, "k=v")
    assert span.trace_id != T and re.fullmatch(r"[0-9a-f]{32}", span.trace_id)
    assert span.parent_id is None and span.tracestate is None and span.flags == "01"
    assert span.trace_id != "0" * 32 and span.span_id != "0" * 16


def test_valid_traceparent_is_continued() -> None:
    """A valid header (also a later version with extra fields, and surrounding blanks): same trace, the
    caller's span as parent, the caller's flags, tracestate passed through; a new span id of 16 hex."""
    for header in (VALID, f"  {VALID} ", f"cc-{T}-{S}-01-what-ever"):
        span = tracing.start(header, " congo=t61rcWkgMzE ")
        assert (span.trace_id, span.parent_id, span.flags) == (T, S, "01"), header
        assert span.span_id != S and re.fullmatch(r"[0-9a-f]{16}", span.span_id)
        assert span.tracestate == "congo=t61rcWkgMzE" and span.remote_parent
        assert span.traceparent == f"00-{T}-{span.span_id}-01"
    unsampled = tracing.start(f"00-{T}-{S}-00")
    assert not unsampled.sampled and unsampled.traceparent.endswith("-00")


def test_tracestate_over_the_limit_unprintable_or_not_ascii_is_dropped() -> None:
    assert tracing.start(VALID, "a=" + "x" * tracing.MAX_TRACESTATE).tracestate is None
    assert tracing.start(VALID, "a=b\x00").tracestate is None
    assert tracing.start(VALID, "k=\u00e9").tracestate is None  # printable, but not W3C's ASCII
    assert tracing.start(VALID, "").tracestate is None


def test_child_spans_and_raw_headers() -> None:
    """`child` keeps the trace, flags and state with the parent's span as parent; `from_headers` reads raw
    ASGI headers: a repeated `tracestate` is one list (W3C: combined as HTTP combines a repeated field), a
    repeated `traceparent` is malformed and starts a new trace (as the W3C test suite expects; the last one
    used to win)."""
    parent = tracing.start(VALID, "k=v")
    kids = [parent.child() for _ in range(100)]
    assert {k.trace_id for k in kids} == {T} and {k.parent_id for k in kids} == {parent.span_id}
    assert len({k.span_id for k in kids}) == 100 and all(k.tracestate == "k=v" for k in kids)
    span = tracing.from_headers([(b"traceparent", VALID.encode()), (b"tracestate", b"a=1"), (b"x", b"y")])
    assert (span.trace_id, span.parent_id, span.tracestate) == (T, S, "a=1")
    assert tracing.from_headers([(b"traceparent", b"\xff\xfe")]).trace_id != T
    states = [(b"tracestate", b"a=1"), (b"tracestate", b" "), (b"tracestate", b"b=2,c=3")]
    span = tracing.from_headers([(b"traceparent", VALID.encode()), *states])
    assert (span.trace_id, span.tracestate) == (T, "a=1,b=2,c=3")
    other = f"00-{'c' * 32}-{S}-01"
    for twice in ([VALID, VALID], [VALID, other], [other, VALID]):
        span = tracing.from_headers(
            [*((b"traceparent", tp.encode()) for tp in twice), (b"tracestate", b"a=1")]
        )
        assert span.trace_id not in (T, "c" * 32) and span.parent_id is None and span.tracestate is None


def test_ids_are_unique() -> None:
    assert len({tracing.new_trace_id() for _ in range(10_000)}) == 10_000
    assert len({tracing.new_span_id() for _ in range(10_000)}) == 10_000


CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED_CALLER = CALLER[:-2] + "00"


def test_default_sampler_samples_new_traces_and_keeps_a_callers_decision() -> None:
    sampler = tracing.Sampler.from_environ({})
    assert sampler.flags(tracing.new_trace_id(), None) == "01"
    assert sampler.flags("4bf92f3577b34da6a3ce929d0e0e4736", "00") == "00"
    assert tracing.start(UNSAMPLED_CALLER).flags == "00"


@pytest.mark.parametrize(("caller", "passed_on"), [("ff", "01"), ("09", "01"), ("fe", "00"), ("02", "00")])
def test_only_the_sampled_flag_is_passed_on(caller: str, passed_on: str) -> None:
    """Trace Context level 1 defines only `sampled`: a caller's other bits are not propagated."""
    span = tracing.start(f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{caller}")
    assert span.flags == passed_on and span.traceparent.endswith(f"-{passed_on}")
    ratio = tracing.Sampler.from_environ(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}
    )
    assert ratio.flags("4bf92f3577b34da6a3ce929d0e0e4736", caller) == "01"


@pytest.mark.parametrize(
    ("name", "root", "after_sampled_caller"),
    [
        ("always_off", "00", "00"),
        ("parentbased_always_off", "00", "01"),
        ("always_on", "01", "01"),
        ("no_such_sampler", "01", "01"),
    ],
)
def test_named_samplers(name: str, root: str, after_sampled_caller: str) -> None:
    sampler = tracing.Sampler.from_environ({"OTEL_TRACES_SAMPLER": name})
    assert sampler.flags(tracing.new_trace_id(), None) == root
    assert sampler.flags("4bf92f3577b34da6a3ce929d0e0e4736", "01") == after_sampled_caller


def test_ratio_sampler_decides_as_the_opentelemetry_sdk_does() -> None:
    """Every process (node, instances, the SDK in a handler) must take the same decision for a trace."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace.sampling")
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    sampler = tracing.Sampler.from_environ(env)
    theirs = sdk.TraceIdRatioBased(0.25)
    ids = [tracing.new_trace_id() for _ in range(4000)]
    ours = [sampler.flags(t, None) == "01" for t in ids]
    assert ours == [theirs.should_sample(None, int(t, 16), "x").decision.is_sampled() for t in ids]
    assert 800 < sum(ours) < 1200  # about a quarter
    assert sampler.flags(ids[0], "01") == "01"  # parent-based: the caller decided


@pytest.mark.parametrize("arg", ["abc", "", "-1", "7", "nan", "-inf", "inf"])
def test_ratio_sampler_with_a_bad_argument_is_clamped_or_ignored(arg: str) -> None:
    """Not a number (NaN too, which used to fail the import of this module, so the node did not start):
    1; outside 0-1: the nearest bound. Either way kept for the exporter's warning."""
    env = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": arg}
    sampler = tracing.Sampler.from_environ(env)
    expected = "00" if arg in ("-1", "-inf") else "01"
    assert {sampler.flags(tracing.new_trace_id(), None) for _ in range(50)} == {expected}
    assert sampler.bad_ratio == arg
    env["OTEL_TRACES_SAMPLER_ARG"] = "0.5"
    assert tracing.Sampler.from_environ(env).bad_ratio is None


def test_unknown_sampler_is_the_default_and_keeps_a_callers_decision() -> None:
    """A sampler name the node does not know is `parentbased_always_on`, as the SDK in its instances takes
    it: a caller's "not sampled" stays so, never sampled anew and exported."""
    sampler = tracing.Sampler.from_environ({"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    assert sampler.flags("4bf92f3577b34da6a3ce929d0e0e4736", "00") == "00"
    assert sampler.flags("4bf92f3577b34da6a3ce929d0e0e4736", "01") == "01"
    assert sampler.flags(tracing.new_trace_id(), None) == "01"
    assert sampler.unknown == "jaeger_remote"  # for the exporter's warning
    assert tracing.Sampler.from_environ({"OTEL_TRACES_SAMPLER": "Always_Off"}).unknown is None
