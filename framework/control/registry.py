"""The loaded functions: lookups by uuid, name and event type, and the productive filter."""

from __future__ import annotations

from pathlib import Path

from framework.control.manifest import load_manifest
from framework.control.spec import FunctionSpec, Manifest


class Registry:
    """An immutable view of one manifest; a reload builds a new Registry and swaps it in."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.functions: tuple[FunctionSpec, ...] = manifest.functions
        self._by_uuid = {f.uuid.lower(): f for f in self.functions}
        self._by_name = {f.name: f for f in self.functions}
        listeners: dict[str, list[FunctionSpec]] = {}
        for f in self.functions:
            if f.productive:
                # Once per type even when a revision lists it twice: the manifest refuses that, a revision
                # written by another tool or an older version may not, and the function would run twice.
                for event in dict.fromkeys(f.events):
                    listeners.setdefault(event, []).append(f)
        self._listeners = {k: tuple(v) for k, v in listeners.items()}

    @classmethod
    def load(cls, path: Path, check_handlers: bool = True) -> Registry:
        """Load `path` (see `load_manifest`; raises ManifestError) into a new Registry."""
        return cls(load_manifest(path, check_handlers=check_handlers))

    def by_uuid(self, uuid: str) -> FunctionSpec | None:
        return self._by_uuid.get(uuid.lower())

    def by_name(self, name: str) -> FunctionSpec | None:
        return self._by_name.get(name)

    def find(self, name_or_uuid: str) -> FunctionSpec | None:
        return self.by_name(name_or_uuid) or self.by_uuid(name_or_uuid)

    def productive(self, uuid: str) -> FunctionSpec | None:
        """The function with this uuid if it is productive, else None (the "is it productive" check)."""
        spec = self.by_uuid(uuid)
        return spec if spec is not None and spec.productive else None

    def listeners(self, event_type: str) -> tuple[FunctionSpec, ...]:
        """Productive functions listening to `event_type`, in manifest order."""
        return self._listeners.get(event_type, ())
