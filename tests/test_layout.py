"""The layout's one-way data path (DESIGN.md section 9), read from the imports of every module.

Sources → invoker → pool → instance: a source never reaches the runtime or the node (it depends on small
protocols declared where it uses them), the invoker never knows its sources, the runtime never knows who
calls it, and only the composition root (`node.py`) and the CLI that starts it import the node. What
decides what should run (`control`) and the shared Kafka plumbing (`kafka`) sit below all of them.
Imports under TYPE_CHECKING count too: a type is a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FRAMEWORK = Path(__file__).resolve().parents[1] / "framework"

RULES: dict[str, tuple[str, ...]] = {
    "framework.sources": ("framework.node", "framework.cli", "framework.runtime"),
    "framework.invoker": ("framework.node", "framework.cli", "framework.sources"),
    "framework.runtime": ("framework.node", "framework.cli", "framework.sources", "framework.invoker"),
    "framework.control": (
        "framework.node",
        "framework.cli",
        "framework.sources",
        "framework.invoker",
        "framework.runtime",
    ),
    "framework.kafka": ("framework.node", "framework.cli", "framework.sources", "framework.runtime"),
}
"""Package (or module) → what none of its modules may import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(FRAMEWORK.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """The framework modules the code `source` of `module` imports, absolute or relative, at any depth."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            out.add(name)
            out |= {f"{name}.{alias.name}" for alias in node.names}
    return {m for m in out if m == "framework" or m.startswith("framework.")}


def imports_of(path: Path) -> set[str]:
    return imported(path.read_text(), module_name(path), path.name == "__init__.py")


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(FRAMEWORK.rglob("*.py"))


def test_the_walk_sees_every_stage() -> None:
    """The walk finds every stage, so an empty result below means something."""
    names = {module_name(p) for p in MODULES}
    for stage in [*RULES, "framework.node", "framework.runtime.worker.server"]:
        assert any(within(n, stage) for n in names), stage


@pytest.mark.parametrize("stage", sorted(RULES))
def test_data_flows_one_way(stage: str) -> None:
    broken = [
        f"{module_name(path)} imports {name}"
        for path in MODULES
        if within(module_name(path), stage)
        for name in sorted(imports_of(path))
        if any(within(name, banned) for banned in RULES[stage])
    ]
    assert not broken, "\n".join(broken)


def test_only_the_composition_root_and_its_cli_import_the_node() -> None:
    broken = [
        f"{module_name(path)} imports {name}"
        for path in MODULES
        if not within(module_name(path), "framework.node") and not within(module_name(path), "framework.cli")
        for name in imports_of(path)
        if within(name, "framework.node")
    ]
    assert not broken, "\n".join(broken)


def test_relative_imports_are_resolved() -> None:
    """A relative import is checked like an absolute one: the rules would miss `from ..node import X`."""
    code = "from ..node import Node\nfrom . import keyed\nif True:\n    import framework.cli.run\n"
    found = imported(code, "framework.sources.x")
    assert {"framework.node", "framework.sources.keyed", "framework.cli.run"} <= found, found
    assert "framework.node" in imported("from .. import node\n", "framework.sources", is_package=True)
