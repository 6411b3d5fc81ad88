"""framework.control.registry: lookups by uuid, name and event type, and the productive filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.control.registry import Registry
from framework.errors import ManifestError
from tests.support import write_project

MANIFEST = """\
functions:
  - name: first
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
    state: productive
    events: [ping, pong]
  - name: second
    uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02
    handler: functions.mod:handle
    state: draft
    events: [ping]
  - name: third
    uuid: 2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03
    handler: functions.mod:handle
    state: productive
    events: [ping]
"""
MODULES = {"mod": "def handle(payload, ctx):\n    return payload\n"}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry.load(write_project(tmp_path, MANIFEST, MODULES) / "functions.yaml")


def test_lookups(registry: Registry) -> None:
    first = registry.by_name("first")
    assert first is not None
    assert registry.by_uuid("0B6F3C1E-3F1D-4C1A-9A7E-5D2F8E4B6A01") is first
    assert registry.find("first") is first and registry.find(first.uuid) is first
    assert registry.by_name("nobody") is None and registry.find("nobody") is None


def test_productive_filter(registry: Registry) -> None:
    assert registry.productive("0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01") is not None
    assert registry.productive("1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02") is None  # a draft
    assert registry.productive("3e9c6f4b-6a4c-4f4d-8d0b-8a5c1b7e9d04") is None  # unknown


def test_listeners_are_productive_in_manifest_order(registry: Registry) -> None:
    assert [f.name for f in registry.listeners("ping")] == ["first", "third"]
    assert [f.name for f in registry.listeners("pong")] == ["first"]
    assert registry.listeners("other") == ()


def test_a_spec_listing_an_event_twice_listens_once(registry: Registry) -> None:
    """A revision from another tool lists `ping` twice (the manifest refuses it; the log does not check):
    the function is one listener of `ping`, so an event runs it once."""
    first = registry.by_name("first")
    assert first is not None
    twice = first.model_copy(update={"events": ("ping", "pong", "ping")})
    manifest = registry.manifest.model_copy(update={"functions": (twice,)})
    assert [f.name for f in Registry(manifest).listeners("ping")] == ["first"]


def test_load_raises_manifest_errors(tmp_path: Path) -> None:
    root = write_project(
        tmp_path, MANIFEST.replace("functions.mod:handle", "functions.gone:handle", 1), MODULES
    )
    with pytest.raises(ManifestError) as exc:
        Registry.load(root / "functions.yaml")
    assert exc.value.errors[0].endswith(
        "functions.yaml:4:5: handler 'functions.gone:handle' does not import: "
        "ModuleNotFoundError: No module named 'functions.gone'"
    )
    assert len(Registry.load(root / "functions.yaml", check_handlers=False).functions) == 3
