"""Instances: the template (zygote), the instance process, the framing between them and the node's pools.

`Runtime` and `invoke_once` are imported lazily so the template process, which imports
`framework.runtime.instance`, does not pay for the node-side modules (pydantic, prometheus).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framework.runtime.pool import Runtime, invoke_once

__all__ = ["Runtime", "invoke_once"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from framework.runtime import pool

        return getattr(pool, name)
    raise AttributeError(name)
