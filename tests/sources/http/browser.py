"""A real headless Chromium for the dashboard tests: Playwright's Python API on Debian's `chromium`.

No browser is downloaded: Playwright launches the system's Chromium by its path (`CHROMIUM_PATH`, default
`/usr/bin/chromium`). Without one, the dashboard tests do not run and say so in one line, except under CI
(`CI=true`), where a missing Chromium fails the run: `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
NOT_RUN = (
    f"dashboard browser tests did not run: no Chromium at {CHROMIUM} "
    "(install it with `apt-get install chromium`, or set CHROMIUM_PATH, then run `make test`)"
)


def require_chromium() -> str:
    """The Chromium path; otherwise skip the calling module with the one line (fail under CI)."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and no Chromium at {CHROMIUM}: .ci/run installs it", pytrace=False)
    pytest.skip(NOT_RUN, allow_module_level=True)


NETWORK_FAILURE = re.compile(
    r"^Failed to load resource: (net::ERR_\w+|the server responded with a status of \d+)"
)
"""How Chromium reports a failed request on the console: a node that is down, or a non-2xx answer."""


@dataclass
class Recorder:
    """One browser context on a node's dashboard, recording requests, console errors, page errors, dialogs."""

    context: Any
    base: str
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    console_errors: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def page(self) -> Any:
        page = self.context.new_page()
        page.on("request", lambda r: self.requests.append((r.method, r.url, dict(r.headers))))
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("dialog", self._dialog)
        return page

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.console_errors.append((msg.text, str((msg.location or {}).get("url", ""))))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, page: Any, hash_: str = "") -> Any:
        resp = page.goto(f"{self.base}/ui{hash_}", wait_until="domcontentloaded")
        assert resp is not None and resp.status == 200
        return page

    def calls(self, method: str, path_prefix: str) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.requests if r[0] == method and r[1].startswith(self.base + path_prefix)]

    def assert_clean(self, expected_failures: tuple[str, ...] = ()) -> None:
        """Every request went to the node; no page error, no dialog; no console error except a failed
        request to a URL starting with one of `expected_failures` (an invoke that fails on purpose, a node
        that was stopped on purpose)."""
        outside = [
            u for _, u, _ in self.requests if not (u.startswith(self.base + "/") or u.startswith("data:"))
        ]
        assert not outside, f"requests that left the node: {outside}"
        assert any(u.startswith(self.base + "/ui") for _, u, _ in self.requests)
        assert not self.page_errors, self.page_errors
        assert not self.dialogs, self.dialogs
        unexpected = [
            (text, url)
            for text, url in self.console_errors
            if not (
                NETWORK_FAILURE.match(text)
                and url.startswith(tuple(self.base + p for p in expected_failures))
            )
        ]
        assert not unexpected, f"console errors: {unexpected}"


CONTRAST_JS = r"""
() => {
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lin = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
  const lum = ({ r, g, b }) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const bg = (e) => {
    for (let n = e; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0.5) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const bad = [];
  for (const e of document.querySelectorAll("body *")) {
    const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const r = e.getBoundingClientRect();
    if (!own || !r.width || !r.height || e.closest("svg")) continue;
    const s = getComputedStyle(e);
    if (s.visibility === "hidden") continue;
    const l1 = lum(parse(s.color)), l2 = lum(bg(e));
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const what = `${e.tagName}.${e.className} "${e.textContent.trim().slice(0, 30)}"`;
    if (ratio < 4.5) bad.push(`${what} ${ratio.toFixed(2)}`);
  }
  return bad;
}
"""
"""Visible elements whose own text has a WCAG contrast below 4.5:1 against their effective background."""
