"""Instances: the template (zygote), the instance process, the framing between them and the node's pools.

`Runtime` and `invoke_once` are imported lazily so the template process, which imports
`framework.runtime.worker.server`, does not pay for the node-side modules (pydantic, prometheus).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framework.runtime.pools import Runtime, invoke_once

__all__ = ["Runtime", "invoke_once"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from framework.runtime import pools

        return getattr(pools, name)
    raise AttributeError(name)
