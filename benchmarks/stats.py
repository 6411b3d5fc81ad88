"""Percentiles, medians and the per-case record that ends up in the table and the JSON."""

from __future__ import annotations

import math
import statistics
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["higher", "lower"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): no interpolation, so p99 of few samples is a real sample."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def describe(exc: BaseException) -> str:
    """One line for the JSON: the exception and where it came from."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


@dataclass
class Series:
    """One case: the platform's samples (one per repetition) and the baseline's, taken in the same run."""

    case: str
    unit: str
    better: Better
    baseline_name: str
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    error: str | None = None
    baseline_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        if self.error is None:  # keep the first reason: later ones are usually consequences
            self.error = reason

    def fail_baseline(self, reason: str) -> None:
        if self.baseline_error is None:
            self.baseline_error = reason

    @property
    def figure(self) -> float | None:
        return statistics.median(self.samples) if self.samples and self.error is None else None

    @property
    def baseline(self) -> float | None:
        if not self.baseline_samples or self.baseline_error is not None:
            return None
        return statistics.median(self.baseline_samples)

    @property
    def ratio(self) -> float | None:
        f, b = self.figure, self.baseline
        return f / b if f is not None and b else None

    @property
    def ok(self) -> bool:
        return self.figure is not None and self.baseline is not None

    def to_dict(self) -> dict[str, Any]:
        errors = [
            self.error or ("" if self.samples else "not measured"),
            f"baseline: {self.baseline_error}"
            if self.baseline_error
            else ("" if self.baseline_samples else "baseline not measured"),
        ]
        error = "; ".join(e for e in errors if e) or None
        return {
            "case": self.case,
            "figure": _round(self.figure),
            "baseline": _round(self.baseline),
            "ratio": _round(self.ratio),
            "unit": self.unit,
            "better": self.better,
            "baseline_name": self.baseline_name,
            "status": "ok" if error is None else "failed",
            "error": error,
            "samples": [_round(s) for s in self.samples],
            "baseline_samples": [_round(s) for s in self.baseline_samples],
            **({"extra": self.extra} if self.extra else {}),
        }


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return float(f"{value:.4g}") if abs(value) < 1000 else round(value, 1)
