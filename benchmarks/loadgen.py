"""The HTTP load generator: a process of its own, so it never shares a loop (or a GIL) with what it measures.

`python -m benchmarks.loadgen '<json config>'` opens every connection first, runs a warm-up, then measures
and prints one JSON object. Keep-alive HTTP/1.1 on raw asyncio transports, pre-encoded request bytes, uvloop.
`run()` is the harness side: it spawns that process and parses its answer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks.httpclient import Connection, encode_request
from benchmarks.procs import child_env
from benchmarks.stats import percentile

NAME = (
    "benchmarks.loadgen: asyncio HTTP/1.1 keep-alive client on raw transports, pre-encoded requests, uvloop"
)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    elapsed: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    sample_error: str
    warmup_requests: int = 0
    """Requests answered during the warm-up (not in the figures; for totals such as CPU per request)."""

    def check(self) -> LoadResult:
        """Raise when any request failed: a figure over failed requests would be meaningless."""
        if self.errors or not self.requests:
            raise RuntimeError(
                f"{self.errors} of {self.requests} requests failed, statuses {self.statuses}: "
                f"{self.sample_error[:300]}"
            )
        return self


async def _worker(
    conn: Connection,
    raw: bytes,
    deadline: float,
    count: int,
    lat: list[float],
    statuses: dict[int, int],
    errors: list[str],
) -> None:
    now = time.perf_counter
    done = 0
    while (count and done < count) or (not count and now() < deadline):
        t0 = now()
        status, body = await conn.request(raw)
        lat.append(now() - t0)
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200 and len(errors) < 3:
            errors.append(f"{status} {body[:200]!r}")
        done += 1


async def _phase(conns: list[Connection], raw: bytes, duration: float, count: int) -> dict[str, Any]:
    """Run every connection until `duration` passes, or `count` requests in all (split evenly)."""
    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    per = (
        [count // len(conns) + (1 if i < count % len(conns) else 0) for i in range(len(conns))]
        if count
        else []
    )
    start = time.perf_counter()
    deadline = start + duration
    jobs = [
        _worker(c, raw, deadline, per[i] if count else 0, lat, statuses, errors)
        for i, c in enumerate(conns)
        if not count or per[i]
    ]
    await asyncio.gather(*jobs)
    elapsed = time.perf_counter() - start
    bad = sum(n for s, n in statuses.items() if s != 200)
    return {
        "requests": len(lat),
        "errors": bad,
        "elapsed": elapsed,
        "rps": len(lat) / elapsed,
        "p50_ms": percentile(lat, 50) * 1e3 if lat else 0.0,
        "p99_ms": percentile(lat, 99) * 1e3 if lat else 0.0,
        "statuses": {str(s): n for s, n in statuses.items()},
        "sample_error": "; ".join(errors),
    }


async def _main(cfg: dict[str, Any]) -> dict[str, Any]:
    host, port = cfg["host"], int(cfg["port"])
    raw = encode_request(
        cfg.get("method", "POST"), host, port, cfg["path"], cfg.get("body", "").encode(), cfg.get("headers")
    )
    conns = await asyncio.gather(*(Connection.open(host, port) for _ in range(int(cfg["connections"]))))
    try:
        duration, count = float(cfg.get("duration", 0)), int(cfg.get("count", 0))
        warmed = 0
        if cfg.get("warmup"):  # seconds in duration mode; one full round in count mode
            warmed = (await _phase(conns, raw, float(cfg["warmup"]), count))["requests"]
        return {**await _phase(conns, raw, duration, count), "warmup_requests": warmed}
    finally:
        for c in conns:
            c.close()


async def run(
    host: str,
    port: int,
    path: str,
    *,
    body: str = "",
    connections: int = 1,
    duration: float = 0.0,
    count: int = 0,
    warmup: float = 0.0,
    limit: float = 120.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Spawn the load generator process with this config and return what it measured; `headers` are
    added to every request."""
    cfg = {
        "headers": headers or {},
        "host": host,
        "port": port,
        "path": path,
        "body": body,
        "connections": connections,
        "duration": duration,
        "count": count,
        "warmup": warmup,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        orjson.dumps(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"load generator did not finish within {limit} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return LoadResult(**orjson.loads(out))


def main() -> None:
    import uvloop

    cfg = orjson.loads(sys.argv[1])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_main(cfg))
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    main()
