"""Take the README's dashboard screenshots: `.venv/bin/python docs/screenshots.py` from the project root.

Starts `faas run --no-kafka` on the example project (this folder's functions.yaml) on a free port, makes
some invocations (a few of `add` fail on purpose), then lets Playwright drive the system's Chromium
(`CHROMIUM_PATH`, default /usr/bin/chromium) and writes docs/dashboard-functions.png and
docs/dashboard-function.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

from framework.kafka.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ADD = "9ed35194-3b1f-46c8-a953-ca9db008e163"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def start_node(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FAAS_HTTP_PORT": str(port), "FAAS_MANIFEST": str(ROOT / "functions.yaml")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", "run", "--no-kafka"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the node did not become ready within 60 s")


def traffic(base: str) -> None:
    for i in range(12):
        httpx.post(f"{base}/functions/{ADD}/invoke", json={"a": i, "b": 2}, timeout=30)
    for bad in ("not an object", [1, 2]):
        httpx.post(f"{base}/functions/{ADD}/invoke", json=bad, timeout=30)
    for name in ("Ann", "Bo", "Cy"):
        httpx.post(f"{base}/events/conversation.created", json={"name": name}, timeout=30)


def main() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    node = start_node(port)
    try:
        traffic(base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
            page.goto(f"{base}/ui")
            expect(page.locator("tbody[data-f=rows] tr")).to_have_count(5, timeout=30_000)
            expect(page.locator("#conn")).to_contain_text("updated", timeout=30_000)
            page.screenshot(path=str(DOCS / "dashboard-functions.png"), full_page=True)
            page.get_by_role("link", name="add", exact=True).click()
            failed = page.locator("table.records tr.failing").first
            failed.get_by_role("button", name="Show").click(timeout=30_000)
            page.get_by_label("Payload").fill('{"a": 40, "b": 2}')
            page.get_by_role("button", name="Invoke").click()
            expect(page.locator("[data-f=out]")).to_contain_text('"sum": 42', timeout=30_000)
            page.screenshot(path=str(DOCS / "dashboard-function.png"), full_page=True)
            browser.close()
    finally:
        node.terminate()
        node.wait(30)
    print("wrote docs/dashboard-functions.png and docs/dashboard-function.png")


if __name__ == "__main__":
    main()
