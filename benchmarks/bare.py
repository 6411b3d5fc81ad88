"""The bare baseline server: Starlette + uvicorn calling the same handlers in-process, nothing else.

Same server settings as the node (uvloop, httptools, access log off) and the same response shape, so the
difference to the node is the platform: routing through the invoker, the pool and the instance process.
`python -m benchmarks.bare PORT ROOT UUID=module:attr ...`
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from framework.context import Context

Handler = Callable[[Any, Context], Awaitable[Any]]


def load_handler(spec: str) -> Handler:
    module, _, attr = spec.partition(":")
    fn: Handler = getattr(importlib.import_module(module), attr)
    return fn


def build_app(handlers: dict[str, Handler]) -> Starlette:
    log = logging.getLogger("bare")

    async def invoke(request: Request) -> Response:
        fn_uuid = request.path_params["uuid"]
        handler = handlers.get(fn_uuid)
        if handler is None:
            return Response(b'{"error":{"type":"NotFound"}}', 404, media_type="application/json")
        body = await request.body()
        payload = orjson.loads(body) if body else None
        inv_id = str(uuid.uuid4())
        ctx = Context(inv_id, fn_uuid, fn_uuid, "direct", None, time.time() + 30, {}, log, "bare")
        started = time.perf_counter()
        result = await handler(payload, ctx)
        out = {
            "invocation_id": inv_id,
            "result": result,
            "duration_ms": (time.perf_counter() - started) * 1e3,
            "cold_start": False,
        }
        return Response(orjson.dumps(out), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    return Starlette(
        routes=[Route("/functions/{uuid}/invoke", invoke, methods=["POST"]), Route("/readyz", ready)]
    )


def main() -> None:
    port, root, *pairs = sys.argv[1:]
    sys.path.insert(0, root)  # handlers import relative to the benchmark project, as on the node
    handlers = {k: load_handler(v) for k, _, v in (p.partition("=") for p in pairs)}
    uvicorn.run(
        build_app(handlers),
        host="127.0.0.1",
        port=int(port),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
