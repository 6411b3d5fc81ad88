"""The dashboard (DESIGN.md section 16) in a real headless Chromium, against real `faas run` nodes.

Each test records every request the page makes (all must go to the node), every console error, every
uncaught page error and every dialog (an executed `alert` would open one), and checks them at its end.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.sources.http.browser import CHROMIUM_ARGS, CONTRAST_JS, Recorder, require_chromium
from tests.support import Node, wait_for, write_project

CHROMIUM = require_chromium()

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402 - after the check

GREETER = "eeeeeeee-0000-4000-8000-000000000001"
BREAKER = "eeeeeeee-0000-4000-8000-000000000002"
SKETCH = "eeeeeeee-0000-4000-8000-000000000003"
STATES = {"greeter": "productive", "breaker": "productive", "sketch": "draft"}
INJECTION = "<script>alert(1)</script>"

MANIFEST = f"""
functions:
  - name: greeter
    uuid: {GREETER}
    handler: functions.uih:greeter
    state: productive
    events: [ui.hello]
  - name: breaker
    uuid: {BREAKER}
    handler: functions.uih:breaker
    state: productive
    events: [ui.hello]
  - name: sketch
    uuid: {SKETCH}
    handler: functions.uih:greeter
    state: draft
    events: [ui.hello]
"""
MODULES = {
    "uih": """
    import asyncio

    async def greeter(payload, ctx):
        await asyncio.sleep((payload or {}).get("sleep", 0))
        word = (payload or {}).get("word", "nobody")
        ctx.log.info("greeting %s", word)
        return {"shout": word.upper(), "fn": ctx.function}

    async def breaker(payload, ctx):
        if (payload or {}).get("fail"):
            ctx.log.warning("about to fail: %s", payload.get("say", ""))
            raise ValueError(payload.get("say") or "breaker was told to fail")
        return {"fine": (payload or {}).get("n")}
    """
}
WAIT = 30_000
"""Milliseconds a page gets to show something (a deadline, not a sleep: the machine is shared)."""
POLL_MS = 2000
"""The page's polling round (`POLL_MS` in the dashboard's app.js)."""
POLL_TIMEOUT_MS = 8000
"""How long the page waits for a read before it takes the node as hung (`POLL_TIMEOUT_MS` in app.js)."""

expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def serving(
    tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker, manifest: str, modules: dict[str, str]
) -> Iterator[Node]:
    """A node serving a project of its own for a whole module."""
    root = write_project(tmp_path_factory.mktemp("ui"), manifest, modules)
    n = Node(root, broker.bootstrap).wait_ready()
    yield n
    n.kill()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Node]:
    yield from serving(tmp_path_factory, broker, MANIFEST, MODULES)


@pytest.fixture
def ui(browser: Browser) -> Iterator[Callable[..., Recorder]]:
    """`ui(node, width=1280)`: a fresh browser context (its own sessionStorage) on a node's dashboard."""
    made: list[Recorder] = []

    def make(n: Node, width: int = 1280) -> Recorder:
        rec = Recorder(browser.new_context(viewport={"width": width, "height": 900}), n.url)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.context.close()


def invoke(n: Node, uuid: str, body: Any, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{n.url}/functions/{uuid}/invoke", json=body, headers=headers, timeout=30)


def row_of(page: Page, name: str) -> Any:
    return page.locator("tbody tr").filter(has=page.get_by_role("link", name=name, exact=True))


def next_round(page: Page, path: str = "/functions") -> None:
    """Move the page's clock (installed with `page.clock.install()`) on by a polling round, and wait until
    the round it starts asks the node for `path`: a round without waiting one out. A round still running
    (its timer not set yet) sets its timer when it ends, and the clock, which runs as well, fires it."""
    with page.expect_request(lambda r: r.url.split("?")[0].endswith(path), timeout=WAIT):
        page.clock.fast_forward(POLL_MS)


def open_function(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(name)


# ---- the functions list ----


def test_list_matches_the_manifest(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. A manifest of greeter and breaker (productive) and sketch (draft), all listening to ui.hello.
    2. Open /ui.
    Result: one row per function, each with its name as a link, its state, its events and its live
    instance count, an invocation chart; nothing else is listed, nothing is wider than 1280 px; no request
    left the node and the console stayed clean.
    """
    rec = ui(node)
    page = rec.open(rec.page())
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    listing = httpx.get(f"{node.url}/functions", timeout=30).json()["functions"]
    for f in listing:
        row = row_of(page, f["name"])
        expect(row).to_have_count(1)
        expect(row.locator("td[data-label=State]")).to_have_text(STATES[f["name"]])
        expect(row.locator("td[data-label=Events]")).to_have_text("ui.hello")
        expect(row.locator("td[data-label=Instances]")).to_have_text(re.compile(r"^\d+$"))
    expect(row_of(page, "greeter").locator("td[data-label=Invocations] svg")).to_be_visible()
    # sketch never ran: the page asks for the active functions only and shows it with zeros, not dashes
    expect(row_of(page, "sketch").locator("td[data-label=Invocations]")).to_have_text("0 in 15 min")
    asked = [url for _, url, _ in rec.calls("GET", "/invocations/stats")]
    assert asked and all(url.endswith("/invocations/stats?active=true") for url in asked), asked
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280, "wider than the window"
    rec.assert_clean()


def test_list_updates_without_reload_after_outside_invocations(
    node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. Open /ui; mark the page's window (a reload would lose the mark).
    2. Invoke breaker 2 times successfully and once failing, over HTTP, from outside the page.
    Result: breaker's row counts 3 more invocations and shows a failure count of at least 1, highlighted,
    with no reload (the mark is still there).
    """
    rec = ui(node)
    page = rec.open(rec.page())
    row = row_of(page, "breaker")
    invocations = row.locator("td[data-label=Invocations]")
    expect(invocations).to_have_text(re.compile(r"\d+ in 15 min"))
    before = int(invocations.inner_text().split()[0])
    page.evaluate("window.notReloaded = true")
    assert [invoke(node, BREAKER, b).status_code for b in ({"n": 1}, {"fail": True}, {"n": 2})] == [
        200,
        500,
        200,
    ]
    expect(invocations).to_have_text(re.compile(rf"^{before + 3} in 15 min"))
    expect(row.locator("td[data-label=Failures] .error")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(row).to_have_class(re.compile(r"\bfailing\b"))
    expect(row.locator("td[data-label=Invocations] svg rect.bar-fail")).not_to_have_count(0)
    assert page.evaluate("window.notReloaded") is True
    rec.assert_clean()


def test_list_shows_live_revision_and_modified(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node with watch mode off (FAAS_WATCH=false); open /ui.
    2. Edit the handlers' module in the working copy.
    Result: 1 shows each productive function's live revision as GET /functions gives it, not modified;
    2 shows them modified, by itself, still on the same live revision; the draft shows no revision.
    """
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, broker.bootstrap, env={"FAAS_WATCH": "false"}).wait_ready()
    listing = {f["name"]: f for f in httpx.get(f"{n.url}/functions", timeout=30).json()["functions"]}
    rec = ui(n)
    page = rec.open(rec.page())
    for name in ("greeter", "breaker"):
        row = row_of(page, name)
        expect(row.locator("td[data-label=Revision]")).to_have_text(f"r{listing[name]['revision']}")
        expect(row.locator("td[data-label=Modified]")).to_have_text("no")
    expect(row_of(page, "sketch").locator("td[data-label=Revision]")).to_have_text("-")
    module = root / "functions" / "uih.py"
    module.write_text(module.read_text() + "\n# an edit that is not deployed\n")
    for name in ("greeter", "breaker"):
        row = row_of(page, name)
        expect(row.locator("td[data-label=Modified]")).to_have_text("modified")
        expect(row.locator("td[data-label=Revision]")).to_have_text(f"r{listing[name]['revision']}")
    rec.assert_clean()


def test_list_degrades_to_dashes_without_records_and_computes_stats_from_them(
    node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. Invoke greeter and breaker (one failure) over HTTP; open /ui.
    2. In the page, compute the 15-minute figures from GET /invocations alone (as for a node without
       /invocations/stats) and compare them with the node's own.
    3. Make the page believe the node serves no invocation records at all (its session lists no
       /invocations routes).
    Result: 2 gives the same counts and failures per function, and percentiles within the node's bin width
    (25 %); 3 shows "-" in the invocation columns at the next refresh, with no failed request.
    """
    assert invoke(node, GREETER, {"word": "x"}).status_code == 200
    assert invoke(node, BREAKER, {"fail": True}).status_code == 500
    rec = ui(node)
    page = rec.open(rec.page())
    expect(row_of(page, "breaker").locator("td[data-label=Invocations]")).to_contain_text("in 15 min")
    both = page.evaluate(
        """async () => {
          state.busy = true;  // no polling round (whose session would restore the routes) meanwhile
          try {
            const own = await loadStats();
            state.routes.delete("/invocations/stats");
            const computed = await loadStats();
            state.routes.add("/invocations/stats");
            return [Object.fromEntries(own), Object.fromEntries(computed)];
          } finally {
            state.busy = false;
          }
        }"""
    )
    own, computed = both
    for uuid in (GREETER, BREAKER):
        assert computed[uuid]["count"] == own[uuid]["count"] > 0
        assert computed[uuid]["failures"] == own[uuid]["failures"]
        for q in ("p50_ms", "p99_ms"):
            assert computed[uuid][q] == pytest.approx(own[uuid][q], rel=0.1), (uuid, q)
    assert own[BREAKER]["failures"] >= 1

    def without_records(route: Any) -> None:  # the node's session, as a node without records answers it
        answer = route.fetch()
        body = answer.json()
        body["routes"] = [r for r in body["routes"] if not r.startswith("/invocations")]
        route.fulfill(response=answer, json=body)

    page.route("**/ui/session", without_records)
    for label in ("Invocations", "Failures", "Duration"):
        expect(row_of(page, "greeter").locator(f"td[data-label={label}]")).to_have_text("-")
    rec.assert_clean()


SCHEDULED = """
functions:
  - name: ticker
    uuid: eeeeeeee-5555-4000-8000-000000000001
    handler: functions.tick:ok
    state: productive
    schedules: [{cron: "* * * * * */2"}]
  - name: faller
    uuid: eeeeeeee-5555-4000-8000-000000000002
    handler: functions.tick:fail
    state: productive
    schedules: [{cron: "* * * * * */2"}]
"""
TICKS = {
    "tick": "async def ok(payload, ctx):\n    return 1\n\nasync def fail(payload, ctx):\n    raise KeyError\n"
}


def test_list_shows_schedules_with_next_and_last_run(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node serves ticker and faller, each on a schedule every 2 s; faller raises. 2. Open /ui.
    Result: each row's Schedules cell names its cron and the next fire time `GET /functions` gives (in
    UTC), and, without a reload, its last run: ticker `ok`, faller `failed (FunctionError)`, each with its
    time."""
    root = write_project(tmp_path, SCHEDULED, TICKS)
    n = nodes(root, None, kafka=False).wait_ready()
    rec = ui(n)
    page = rec.open(rec.page())
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    for name, last in (("ticker", "ok"), ("faller", r"failed \(FunctionError\)")):
        cell = row_of(page, name).locator("td[data-label=Schedules]")
        expect(cell).to_contain_text(re.compile(rf"^\* \* \* \* \* \*/2 next {stamp}"))
        expect(cell).to_contain_text(re.compile(rf"last: {last} at {stamp}$"))
    listed = {f["name"]: f for f in httpx.get(f"{n.url}/functions", timeout=30).json()["functions"]}
    shown = row_of(page, "ticker").locator("td[data-label=Schedules]").inner_text()
    found = re.search(rf"next ({stamp})", shown)
    assert found, shown
    on_page = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    api = datetime.fromisoformat(listed["ticker"]["schedules"][0]["next_fire"].replace("Z", "+00:00"))
    # The page polls every 2 s and the schedule moves on every 2 s: a tick or two apart at most.
    assert abs((api - on_page).total_seconds()) <= 6, (on_page, api)
    rec.assert_clean()


# ---- a function's page ----


def test_invoke_from_the_page_shows_the_result(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Open /ui, click greeter, enter {"word": "marmalade"} and press Invoke.
    2. Enter invalid JSON and press Invoke.
    Result: 1 shows greeter's result, MARMALADE, and adds the invocation to its recent ones; 2 shows the
    parse error and sends nothing (still one POST).
    """
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "greeter")
    payload = page.get_by_label("Payload")
    payload.fill('{"word": "marmalade"}')
    page.get_by_role("button", name="Invoke").click()
    out = page.locator("[data-f=out]")
    expect(out).to_contain_text('"shout": "MARMALADE"')
    expect(out).to_contain_text("ok")
    invocation_id = re.search(r"invocation (\S+)", out.inner_text())
    assert invocation_id is not None
    expect(page.locator(f"#inv-{invocation_id.group(1)}")).to_be_attached()

    payload.fill('{"word": ')
    page.get_by_role("button", name="Invoke").click()
    expect(out).to_contain_text("Invalid JSON, not sent")
    expect(payload).to_have_attribute("aria-invalid", "true")
    assert len(rec.calls("POST", "/functions/")) == 1
    rec.assert_clean()


def test_failing_invocation_shows_its_error_type_and_log_line_as_text(
    node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. Invoke breaker over HTTP so that it logs and raises `<script>alert(1)</script>`.
    2. Open /ui, click breaker, press Show on the failed invocation; then open the Failed view.
    Result: the invocation shows FunctionError; its details show the log line and the error message with
    the markup as text: no script element was inserted and no dialog opened. The Failed view lists it.
    """
    r = invoke(node, BREAKER, {"fail": True, "say": INJECTION})
    assert r.status_code == 500 and r.json()["error"]["type"] == "FunctionError"
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "breaker")
    failed = page.locator("table.records tbody tr.failing").filter(has_text=INJECTION).first
    expect(failed.locator("td[data-label=Outcome]")).to_contain_text("FunctionError")
    failed.get_by_role("button", name="Show").click()
    details = page.locator("tr.detail:not([hidden])").first
    expect(details.locator("ol.logs")).to_contain_text(f"about to fail: {INJECTION}")
    expect(details.locator("p.error")).to_contain_text(f"FunctionError: ValueError: {INJECTION}")
    expect(details.locator("p.error")).to_have_css("max-height", "240px")  # a box, as the invoke form's
    expect(failed.get_by_role("button", name="Hide")).to_have_attribute("aria-expanded", "true")
    assert page.locator("main script").count() == 0

    page.get_by_role("link", name="Failed", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Failed invocations")
    row = page.locator("table.records tbody tr.failing").filter(has_text=INJECTION).first
    expect(row.locator("td[data-label=Function]")).to_have_text("breaker")
    expect(row.locator("td[data-label=Outcome]")).to_contain_text("FunctionError")
    assert page.locator("main script").count() == 0
    rec.assert_clean()


def test_each_failed_row_shows_its_own_details_whatever_its_id(
    node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. The Failed view gets two failed records whose ids differ only in where their colons are
    (`s:10:T` and `s1:0:T`, as scheduled invocations of functions `s` and `s1` have; the node's answer is
    replaced in the browser: a pair so named needs eleven schedules fired in one second). 2. Show the
    second. Result: its own error shows, not the first's; the first stays hidden. (Detail rows were
    named from the id without its colons: both were `inv-s10T`, and Show opened the first.)"""
    tick = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def record(invocation_id: str, function: str, message: str) -> dict[str, Any]:
        return {
            "invocation_id": invocation_id, "function": function, "uuid": BREAKER, "revision": None,
            "trigger": "schedule", "event": None, "event_id": None, "trace_id": None, "node": "n",
            "instance_id": "i", "started_at": tick, "duration_ms": 1.0, "cold_start": False, "attempt": 1,
            "ok": False, "error": {"type": "FunctionError", "message": message}, "logs": [],
        }  # fmt: skip

    records = [record("s:10:T", "s", "the first failure"), record("s1:0:T", "s1", "the second failure")]
    rec = ui(node)
    page = rec.page()
    page.route(
        re.compile(r".*/invocations\?ok=false.*"),
        lambda route: route.fulfill(json={"invocations": records}),
    )
    rec.open(page, "#/failed")
    rows = page.locator("table.records tbody tr.failing")
    expect(rows).to_have_count(2)
    rows.filter(has_text="the second failure").get_by_role("button", name="Show").click()
    shown = page.locator("tr.detail:not([hidden])")
    expect(shown).to_have_count(1)
    expect(shown.locator("p.error")).to_contain_text("the second failure")
    ids = page.eval_on_selector_all("tr.detail", "rows => rows.map((r) => r.id)")
    assert len(set(ids)) == 2, ids
    rec.assert_clean()


def test_a_refresh_keeps_focus_and_waits_for_a_selection(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. breaker fails; open the Failed view and press Show on that failure (focus stays on its button).
    2. breaker fails again, from outside. 3. Select the shown error's text; breaker fails a third time.
    4. Clear the selection.
    Result: 2 the list is redrawn with the new failure on top and the focus is still on the same
    invocation's Hide button (it used to fall to the page); 3 the list is not redrawn while the text is
    selected (two rounds later the third failure is not listed, the selection is intact); 4 it is then."""
    first = invoke(node, BREAKER, {"fail": True, "say": "focus one"}).headers["faas-invocation-id"]
    rec = ui(node)
    page = rec.open(rec.page(), "#/failed")
    row = page.locator("table.records tbody tr.failing").filter(has_text="focus one")
    row.get_by_role("button", name="Show").click()
    hide = row.get_by_role("button", name="Hide")
    expect(hide).to_be_focused()
    second = invoke(node, BREAKER, {"fail": True, "say": "focus two"}).headers["faas-invocation-id"]
    expect(page.locator(f"#inv-{second}")).to_be_attached()
    expect(hide).to_be_focused()
    assert page.evaluate("document.activeElement.dataset.key") == f"logs:{first}"

    page.evaluate(
        """(id) => {
          const r = document.createRange();
          r.selectNodeContents(document.querySelector(`#inv-${id} p.error`));
          document.getSelection().removeAllRanges();
          document.getSelection().addRange(r);
        }""",
        first,
    )
    third = invoke(node, BREAKER, {"fail": True, "say": "focus three"}).headers["faas-invocation-id"]
    for _ in range(2):  # two whole rounds
        with page.expect_request(f"{node.url}/ui/session", timeout=WAIT):
            pass
    expect(page.locator(f"#inv-{third}")).not_to_be_attached()
    assert "focus one" in page.evaluate("document.getSelection().toString()")
    page.evaluate("document.getSelection().removeAllRanges()")
    expect(page.locator(f"#inv-{third}")).to_be_attached()
    rec.assert_clean()


def test_function_page_updates_without_reload(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Open greeter's page and start typing a payload.
    2. Invoke greeter over HTTP from outside.
    Result: that invocation appears among the recent ones by itself; the payload being typed is kept.
    """
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "greeter")
    page.get_by_label("Payload").fill('{"word": "half-typed')
    r = invoke(node, GREETER, {"word": "outside"})
    assert r.status_code == 200
    expect(page.locator(f"#inv-{r.json()['invocation_id']}")).to_be_attached()
    expect(page.get_by_label("Payload")).to_have_value('{"word": "half-typed')
    rec.assert_clean()


def test_revisions_match_what_the_node_serves(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Open greeter's page.
    Result: when the node serves `GET /functions/{uuid}/revisions` (GET /ui/session lists it), the page
    lists each kept revision newest first with its action and author, and marks as live the revision
    GET /functions names; the spec shown is that revision's. When the node does not serve it, the section
    shows "-" and the page never asked for it.
    """
    routes = httpx.get(f"{node.url}/ui/session", timeout=30).json()["routes"]
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "greeter")
    section = page.locator("[data-f=revisions]")
    if "/functions/{uuid}/revisions" not in routes:
        expect(section).to_have_text("- (this node keeps no revisions)")
        expect(page.locator("#conn")).to_contain_text("updated")
        assert not rec.calls("GET", f"/functions/{GREETER}/revisions")
        rec.assert_clean()
        return
    kept = httpx.get(f"{node.url}/functions/{GREETER}/revisions", timeout=30).json()["revisions"]
    entry = next(
        f
        for f in httpx.get(f"{node.url}/functions", timeout=30).json()["functions"]
        if f["name"] == "greeter"
    )
    rows = section.locator("tbody tr")
    expect(rows).to_have_count(len(kept))
    for i, r in enumerate(kept):
        expect(rows.nth(i).locator("td[data-label=Revision]")).to_contain_text(f"r{r['revision']}")
        expect(rows.nth(i).locator("td[data-label=Action]")).to_contain_text(r["action"])
        expect(rows.nth(i).locator("td[data-label=By]")).to_have_text(r["deployed_by"])
    expect(section.locator("tr.live td[data-label=Revision]")).to_have_text(f"r{entry['revision']}live")
    expect(page.locator("[data-f=facts]")).to_contain_text(f"Live revisionr{entry['revision']}")
    expect(page.locator("[data-f=spec]")).to_contain_text('"handler": "functions.uih:greeter"')
    rec.assert_clean()


def test_invoke_error_and_html_result_render_as_text(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. On breaker's page, invoke with {"fail": true, "say": "<img src=x onerror=alert(2)>"}.
    2. On greeter's page, invoke with a word that is a script tag.
    Result: 1 shows the FunctionError and its message as text; 2 shows the upper-cased tag as text; no
    image or script element was inserted, no dialog opened; the only console error is the browser's note
    of the 500 answer of the failing invoke.
    """
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "breaker")
    page.get_by_label("Payload").fill('{"fail": true, "say": "<img src=x onerror=alert(2)>"}')
    page.get_by_role("button", name="Invoke").click()
    out = page.locator("[data-f=out]")
    expect(out).to_contain_text("FunctionError: ValueError: <img src=x onerror=alert(2)>")
    expect(out).to_contain_text("HTTP 500")
    page.get_by_role("link", name="Functions", exact=True).first.click()
    open_function(page, "greeter")
    page.get_by_label("Payload").fill('{"word": "<script>alert(1)</script>"}')
    page.get_by_role("button", name="Invoke").click()
    expect(page.locator("[data-f=out]")).to_contain_text('"shout": "<SCRIPT>ALERT(1)</SCRIPT>"')
    assert page.locator("main script, main img").count() == 0
    rec.assert_clean(expected_failures=(f"/functions/{BREAKER}/invoke",))


@pytest.mark.parametrize(
    ("hash_", "heading"),
    [
        ("#/fn/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "Unknown function"),
        ("#/fn/%E0%A4%A", "Unknown function"),
        ("#/fn/" + SKETCH.upper(), "sketch"),
        ("#/nowhere", "Functions"),
        ("#<img src=x onerror=alert(1)>", "Functions"),
    ],
)
def test_broken_addresses_show_a_page_not_an_error(
    node: Node, ui: Callable[..., Recorder], hash_: str, heading: str
) -> None:
    """1. Open /ui with a hash that names no view, a function that does not exist, markup, a malformed
    escape, or a known uuid in upper case.
    Result: the functions list, an "Unknown function" page, or the function's page (uuids compare without
    case); no page error, no dialog, no script inserted.
    """
    rec = ui(node)
    page = rec.open(rec.page(), hash_)
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    if heading == "Unknown function":
        expect(page.locator("[data-f=facts]")).to_contain_text("not in this node's manifest")
        expect(page.get_by_role("button", name="Invoke")).to_be_disabled()  # a try would earn a 404
    assert page.locator("main script, main img").count() == 0
    rec.assert_clean()


def test_draft_function_page_offers_no_invoke(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Open /ui, click sketch (a draft).
    2. Press Ctrl+Enter in its payload field.
    Result: its page shows its state and says it is not invocable here (with the test-run command); the
    Invoke button is disabled and nothing is sent.
    """
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "sketch")
    expect(page.locator("[data-f=facts]")).to_contain_text("draft")
    expect(page.get_by_role("button", name="Invoke")).to_be_disabled()
    expect(page.locator("[data-f=invokehint]")).to_contain_text("faas invoke sketch")
    page.get_by_label("Payload").focus()
    page.keyboard.press("Control+Enter")
    expect(page.locator("[data-f=out]")).to_be_empty()
    assert not rec.calls("POST", "/functions/")
    rec.assert_clean()


def test_keyboard_only_invoke(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Open greeter's page; focus the payload field by its label, type a payload, press Ctrl+Enter.
    2. Type another payload, Tab to the Invoke button and press Enter.
    Result: both show their result.
    """
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "greeter")
    payload = page.get_by_label("Payload")
    payload.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type('{"word": "keys"}')
    page.keyboard.press("Control+Enter")
    out = page.locator("[data-f=out]")
    expect(out).to_contain_text('"shout": "KEYS"')
    payload.fill('{"word": "tabbed"}')
    payload.focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Invoke")).to_be_focused()
    page.keyboard.press("Enter")
    expect(out).to_contain_text('"shout": "TABBED"')
    rec.assert_clean()


# ---- events ----


def test_events_view_asks_for_listeners_only_when_what_is_served_changes(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node in watch mode; open the Events view. 2. Let three more rounds of the view pass. 3. Make
    breaker a draft in the manifest (watch mode serves the change).
    Result: 1 shows greeter and breaker listening to ui.hello; over 2 the view asks for the listeners of
    ui.hello no more (one request per type when what is served changes, not one per type every round);
    at 3 it shows greeter alone, having asked again."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, broker.bootstrap).wait_ready()
    rec = ui(n)
    page = rec.page()
    page.clock.install()  # the rounds are counted, not waited out (`next_round`)
    rec.open(page)
    page.get_by_role("link", name="Events", exact=True).click()
    row = page.locator("tbody tr").filter(has=page.locator("code", has_text="ui.hello"))
    cell = row.locator("td[data-label='Productive listeners']")
    expect(cell).to_have_text("greeter, breaker")

    def count(path: str) -> int:
        return sum(1 for _, url, _ in list(rec.requests) if url.split("?")[0] == n.url + path)

    asked = count("/events/ui.hello/listeners")
    assert asked >= 1
    for _ in range(3):  # three more rounds (the sync API delivers request events while it waits)
        next_round(page)
    assert count("/events/ui.hello/listeners") == asked
    manifest = root / "functions.yaml"
    edited = manifest.read_text().replace("breaker\n    state: productive", "breaker\n    state: draft")
    manifest.write_text(edited)
    expect(cell).to_have_text("greeter")
    assert count("/events/ui.hello/listeners") > asked
    rec.assert_clean()


def test_event_raised_from_the_page_shows_both_listeners(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Open the Events view: ui.hello with its productive listeners.
    2. Raise ui.hello with {"word": "tea"} from the form.
    3. Raise an event with invalid JSON.
    Result: the listeners are greeter and breaker (not the draft sketch); the combined reply is ok with both
    results (greeter's TEA, breaker's); the invalid JSON is refused without a request.
    """
    rec = ui(node)
    page = rec.open(rec.page())
    page.get_by_role("link", name="Events", exact=True).click()
    row = page.locator("tbody tr").filter(has=page.locator("code", has_text="ui.hello"))
    expect(row.locator("td[data-label='Productive listeners']")).to_have_text("greeter, breaker")
    row.get_by_role("button", name="Raise ui.hello").click()
    expect(page.get_by_label("Event type")).to_have_value("ui.hello")
    page.get_by_label("Payload").fill('{"word": "tea"}')
    page.get_by_role("button", name="Raise event").click()
    out = page.locator("[data-f=out]")
    expect(out.locator("p.ok").first).to_contain_text("ok · event ui.hello")
    results = out.locator("tbody tr")
    expect(results).to_have_count(2)
    expect(results.nth(0)).to_contain_text("greeter")
    expect(results.nth(0)).to_contain_text('"shout": "TEA"')
    expect(results.nth(1)).to_contain_text("breaker")
    expect(results.nth(1)).to_contain_text('"fine": null')

    page.get_by_label("Payload").fill("{oops")
    page.get_by_role("button", name="Raise event").click()
    expect(out).to_contain_text("Invalid JSON, not sent")
    assert len(rec.calls("POST", "/events/")) == 1
    rec.assert_clean()


def test_event_with_a_failing_listener_shows_the_error(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. Raise ui.hello from the page with {"fail": true}: breaker fails, which aborts the chain.
    2. Raise an event type no function listens to; then submit an empty type.
    Result: 1 shows failed with FunctionError naming breaker; 2 shows ok with no listener answering; the
    empty type is refused in the page.
    """
    rec = ui(node)
    page = rec.open(rec.page(), "#/events")
    page.get_by_label("Event type").fill("ui.hello")
    page.get_by_label("Payload").fill('{"fail": true}')
    page.get_by_role("button", name="Raise event").click()
    out = page.locator("[data-f=out]")
    expect(out).to_contain_text("FunctionError")
    expect(out).to_contain_text("(function breaker)")
    page.get_by_label("Event type").fill("nobody.listens")
    page.get_by_role("button", name="Raise event").click()
    expect(out).to_contain_text("No listener answered.")
    page.get_by_label("Event type").fill("  ")
    page.get_by_role("button", name="Raise event").click()
    expect(out).to_contain_text("Enter an event type.")
    assert len(rec.calls("POST", "/events/")) == 2
    rec.assert_clean(expected_failures=("/events/ui.hello",))


def test_right_to_left_text_in_a_reply_stays_in_an_isolate_of_its_own(
    node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. Raise an event type holding a right-to-left override (no listener). 2. Raise ui.hello with breaker
    failing with a message that holds one. Result: the type and the id, then the message and the failing
    function's name, are each in a <bdi> of its own, so the override reverses none of the page's text after
    it (the id and "HTTP 200" were drawn reversed, and "(function breaker)" as "(rekaerb noitcnuf)")."""
    rec = ui(node)
    page = rec.open(rec.page(), "#/events")
    page.get_by_label("Event type").fill(RTL_TYPE)
    page.get_by_role("button", name="Raise event").click()
    line = page.locator("[data-f=out] p").first
    expect(line).to_contain_text("HTTP 200")
    expect(line.locator("bdi")).to_have_count(2)
    expect(line.locator("bdi").first).to_have_text(RTL_TYPE)
    page.get_by_label("Event type").fill("ui.hello")
    page.get_by_label("Payload").fill('{"fail": true, "say": "\u202ebad input"}')
    page.get_by_role("button", name="Raise event").click()
    box = page.locator("[data-f=out] p.error.box")
    expect(box).to_contain_text("(function breaker)")
    expect(box.locator("bdi")).to_have_count(2)
    expect(box.locator("bdi").last).to_have_text("breaker")
    rec.assert_clean(expected_failures=("/events/ui.hello",))


def test_a_listener_cancelled_by_the_chain_abort_is_not_shown_as_failing(
    node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. Raise ui.hello with {"fail": true, "sleep": 5}: breaker fails at once, which cancels greeter, still
    asleep. 2. Open the functions list, greeter's page and the failed view.
    Result: greeter's record says Cancelled; its failures stay as they were (none), its row is not red, its
    record shows Cancelled without the failure colour, and the failed view lists breaker's failure, not it.
    """
    reply = httpx.post(f"{node.url}/events/ui.hello", json={"fail": True, "sleep": 5}, timeout=30).json()
    assert reply["error"]["function"] == "breaker", reply

    def greeter(**query: str) -> list[Any]:
        records = httpx.get(
            f"{node.url}/invocations", params={"function": "greeter", **query}, timeout=30
        ).json()
        return [r for r in records["invocations"] if r["event_id"] == reply["id"]]

    [cancelled] = wait_for(greeter, 30, message="greeter's record of the event")
    assert cancelled["error"]["type"] == "Cancelled", cancelled
    assert greeter(cancelled="true") == [cancelled] and greeter(cancelled="false") == []
    stats = httpx.get(f"{node.url}/invocations/stats", timeout=30).json()
    counted = next(f for f in stats["functions"] if f["function"] == "greeter")
    assert counted["failures"] == 0, counted
    rec = ui(node)
    page = rec.open(rec.page())
    expect(row_of(page, "greeter").locator("td[data-label=Failures]")).to_have_text("0")
    expect(row_of(page, "greeter")).not_to_have_class(re.compile("failing"))
    open_function(page, "greeter")
    row = page.locator("tbody tr", has_text="Cancelled").first
    expect(row).to_be_visible()
    expect(row).not_to_have_class(re.compile("failing"))
    page.goto(f"{node.url}/ui#/failed")
    expect(page.locator("main")).to_contain_text("breaker")
    expect(page.locator("main")).not_to_contain_text(cancelled["invocation_id"][:8])
    rec.assert_clean()


def test_an_error_of_megabytes_keeps_the_page_in_shape(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. On breaker's page, invoke with a message of 1,000,000 characters to raise (the payload's limit is
    1 MiB).
    Result: the HTTP answer carries it whole; the page shows its first 4,000 characters and says how many
    more there are, in a box of bounded height: the page stays about a screen tall and no wider."""
    rec = ui(node)
    page = rec.open(rec.page())
    open_function(page, "breaker")
    page.get_by_label("Payload").fill('{"fail": true, "say": "' + "E" * 1_000_000 + '"}')
    page.get_by_role("button", name="Invoke").click()
    out = page.locator("[data-f=out]")
    expect(out).to_contain_text("more characters)")
    assert page.evaluate("document.documentElement.scrollHeight") < 4000
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    rec.assert_clean(expected_failures=(f"/functions/{BREAKER}/invoke",))


BROKEN_WORDS = """() => {
  const broken = [];
  const walk = document.createTreeWalker(document.querySelector("main"), NodeFilter.SHOW_TEXT);
  for (let text = walk.nextNode(); text; text = walk.nextNode()) {
    const word = text.textContent.trim();
    if (!text.parentElement.closest("td") || !/^[A-Za-z0-9.]{1,12}$/.test(word)) continue;
    const range = document.createRange();
    range.selectNodeContents(text);
    const tops = [...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top));
    const lines = new Set(tops).size;
    const label = text.parentElement.closest("td").dataset.label;
    if (lines > 1) broken.push(`${label}: ${word} on ${lines} lines`);
  }
  return broken;
}"""
"""The short words (one text node) in table cells that the page breaks over several lines."""


# ---- values a page could mangle ----

ODD = "eeeeeeee-0000-4000-8000-0000000000d1"
DOTS = "eeeeeeee-0000-4000-8000-0000000000d2"
ODD_TYPE = "ui.odd/listeners"
WIDE = "eeeeeeee-0000-4000-8000-0000000000d3"
RTL_TYPE = "ui.rtl\u202e.x"
"""An event type holding a right-to-left override (U+202E)."""
LONG_TYPE = "ui." + "w" * 3000
ODD_MANIFEST = f"""
functions:
  - name: echoer
    uuid: {ODD}
    handler: functions.odd:echo
    state: productive
    events: [{ODD_TYPE}]
  - name: dots
    uuid: {DOTS}
    handler: functions.odd:dots
    state: productive
    events: [".", ".."]
  - name: wide
    uuid: {WIDE}
    handler: functions.odd:dots
    state: productive
    events: ["{RTL_TYPE}", "ui.after", "{LONG_TYPE}"]
"""
ODD_MODULES = {
    "odd": """
    async def echo(payload, ctx):
        ctx.log.info("\\x1b[31mred alert\\x1b[0m")
        ctx.log.info("y" * 6000)
        return payload

    async def dots(payload, ctx):
        if (payload or {}).get("fail"):
            raise ValueError("\\x1b[31mred\\x1b[0m failure")
        return {"dots": ctx.event}
    """
}
BIG = '{"n": 9007199254740993, "big": 123456789012345678901234567890}'


@pytest.fixture(scope="module")
def odd_node(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Node]:
    yield from serving(tmp_path_factory, broker, ODD_MANIFEST, ODD_MODULES)


def test_values_show_as_the_node_sent_them(odd_node: Node, ui: Callable[..., Recorder]) -> None:
    """1. On echoer's page, invoke with integers beyond a double's exact range (2**53 + 1, 30 digits); echoer
    logs a line in terminal colours and a line over the 5,000-character cap. 2. Show its record.
    3. Enter `1e999`, then a lone surrogate escape, and press Invoke each time.
    Result: 1 shows both integers digit for digit (the node kept them, the page did not round them); 2 shows
    the coloured line without its escape codes and the cut line ending in an ellipsis; 3 is refused in the
    page, as the node would refuse it, and sends nothing (still one POST)."""
    rec = ui(odd_node)
    page = rec.open(rec.page())
    open_function(page, "echoer")
    payload = page.get_by_label("Payload")
    payload.fill(BIG)
    page.get_by_role("button", name="Invoke").click()
    out = page.locator("[data-f=out]")
    expect(out).to_contain_text('"n": 9007199254740993')
    expect(out).to_contain_text('"big": 123456789012345678901234567890')
    found = re.search(r"invocation (\S+)", out.inner_text())
    assert found is not None
    page.locator(f'button[aria-controls="inv-{found.group(1)}"]').click()
    lines = page.locator(f"#inv-{found.group(1)} ol.logs li span.msg")
    expect(lines.first).to_have_text("red alert")
    expect(lines.nth(1)).to_have_text(re.compile(r"^y{4000,5000} …$"))
    for bad in ("1e999", '"\\ud800"'):
        payload.fill(bad)
        page.get_by_role("button", name="Invoke").click()
        expect(out).to_contain_text("Invalid JSON, not sent")
    assert len(rec.calls("POST", "/functions/")) == 1
    rec.assert_clean()


def test_long_and_right_to_left_event_types_keep_the_page_in_shape(
    odd_node: Node, ui: Callable[..., Recorder]
) -> None:
    """wide listens to a type holding a right-to-left override, `ui.after`, and a 3,003-character type.
    1. Raise the long type over HTTP. 2. Open /ui. 3. Open wide's page. 4. Open the Events view.
    Result: each type in wide's Events cell and fact is isolated in its own <bdi> (the override reversed
    the types after it); no view is wider than the window (the fact and the events table made the page
    about 27,000 px wide), each Raise button keeps its label on one line (it was squeezed to a letter's
    width), and beside the long type in the recent invocations the short words (warm, 1, r1) stay whole
    (the Cold column showed "war" over "m")."""
    for n in (1, 2):  # the second is warm: "warm" is wider than "cold"
        headers = {"ce-specversion": "1.0", "ce-type": LONG_TYPE, "ce-id": f"long-{n}", "ce-source": "t"}
        raised = httpx.post(f"{odd_node.url}/events", content=b"{}", headers=headers, timeout=30)
        assert raised.status_code in (200, 500), raised.text[:300]
    rec = ui(odd_node)
    page = rec.open(rec.page())
    cell = row_of(page, "wide").locator("td[data-label=Events]")
    expect(cell.locator("bdi")).to_have_count(3)
    expect(cell.locator("bdi").nth(1)).to_have_text("ui.after")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    open_function(page, "wide")
    fact = page.locator("dl.facts dd").filter(has=page.locator("bdi"))
    expect(fact.locator("bdi")).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    expect(page.locator("td[data-label=Cold]").first).to_be_visible()
    assert page.evaluate(BROKEN_WORDS) == []
    page.get_by_role("link", name="Events", exact=True).click()
    expect(page.locator("tbody tr").filter(has_text="ui.after")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    heights = page.eval_on_selector_all(
        "button[data-key^='raise:']", "bs => bs.map((b) => b.getBoundingClientRect().height)"
    )
    assert heights and max(heights) < 40, heights
    rec.assert_clean()


def test_an_event_type_ending_in_listeners_is_raised_from_the_page(
    odd_node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. In the Events view, raise `ui.odd/listeners` (which `POST /events/{type}` would read as the
    listeners route) with {"word": "tea"}. Result: the combined reply is ok with echoer's result; the page
    sent it as `POST /events` with the type in `ce-type`."""
    rec = ui(odd_node)
    page = rec.open(rec.page(), "#/events")
    page.get_by_label("Event type").fill(ODD_TYPE)
    page.get_by_label("Payload").fill('{"word": "tea"}')
    page.get_by_role("button", name="Raise event").click()
    out = page.locator("[data-f=out]")
    expect(out.locator("p.ok").first).to_contain_text(f"ok · event {ODD_TYPE}")
    expect(out.locator("tbody tr")).to_contain_text('"word": "tea"')
    [(_, url, headers)] = rec.calls("POST", "/events")
    assert url == odd_node.url + "/events" and headers["ce-type"] == "ui.odd%2Flisteners", (url, headers)
    rec.assert_clean()


def test_event_types_a_url_cannot_carry_and_coloured_errors(
    odd_node: Node, ui: Callable[..., Recorder]
) -> None:
    """1. dots listens to `.` and `..`, which a browser takes as path steps in any URL (`/events/../x` is
    `/x`). Open the Events view. 2. Raise `..`, then `.` with a payload that makes dots raise an error in
    terminal colours. 3. Open the Failed view.
    Result: 1 both types list dots as their listener, and no request failed (the page used to ask
    `/listeners` and `/events/listeners`, 404, every round); 2 both went as `POST /events` with the type in
    `ce-type`, the first ok with dots' result, the second showing the error without its escape codes;
    3 the failure's summary shows no escape codes either."""
    rec = ui(odd_node)
    page = rec.open(rec.page(), "#/events")
    for t in (".", ".."):
        row = page.locator("tbody tr").filter(
            has=page.locator("code", has_text=re.compile(rf"^{re.escape(t)}$"))
        )
        expect(row.locator("td[data-label='Productive listeners']")).to_have_text("dots")
    out = page.locator("[data-f=out]")
    page.get_by_label("Event type").fill("..")
    page.get_by_role("button", name="Raise event").click()
    expect(out.locator("tbody tr")).to_contain_text('"dots": ".."')
    page.get_by_label("Event type").fill(".")
    page.get_by_label("Payload").fill('{"fail": true}')
    page.get_by_role("button", name="Raise event").click()
    expect(out.locator("p.error").filter(has_text="FunctionError:")).to_have_text(
        "FunctionError: ValueError: red failure (function dots)"
    )
    assert [h["ce-type"] for _, _, h in rec.calls("POST", "/events")] == ["..", "."]
    assert not rec.calls("GET", "/listeners") and not rec.calls("GET", "/events/listeners")
    page.get_by_role("link", name="Failed", exact=True).click()
    summary = page.locator("table.records tbody tr.failing").filter(has_text="red failure").first
    expect(summary.locator("td[data-label=Outcome]")).to_contain_text("FunctionError ValueError: red failure")
    assert "\x1b" not in page.locator("main").inner_text()
    rec.assert_clean(expected_failures=("/events",))


def test_a_node_with_records_off_shows_dashes_not_zeros(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node with FAAS_RECORDS=false; greeter is invoked over HTTP. 2. Open /ui.
    Result: greeter's invocation columns show `-` (nothing is counted, which zeros would hide), while the
    API still answers GET /invocations with an empty list."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, None, kafka=False, env={"FAAS_RECORDS": "false"}).wait_ready(60)
    assert invoke(n, GREETER, {"word": "x"}).status_code == 200
    assert httpx.get(f"{n.url}/invocations", timeout=10).json() == {"invocations": []}
    rec = ui(n)
    page = rec.open(rec.page())
    for label in ("Invocations", "Failures", "Duration"):
        expect(row_of(page, "greeter").locator(f"td[data-label={label}]")).to_have_text("-")
    assert not rec.calls("GET", "/invocations")
    rec.assert_clean()


# ---- keys, outages, small screens, contrast ----


def test_api_key_flow(tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]) -> None:
    """1. A node with FAAS_API_KEYS=k-right; open /ui.
    2. Submit an empty key, then a wrong one, then the right one.
    3. Reload the tab; then open the dashboard in a new tab of another browser context; then Forget key.
    Result: before the right key the page shows the key form and an error, never a function; no call of the
    API was made without the key. With it, the list shows and every API call carries it as a bearer token;
    the reload keeps it (sessionStorage), the other context asks again, Forget key asks again.
    """
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, None, kafka=False, env={"FAAS_API_KEYS": "k-right"}).wait_ready()
    rec = ui(n)
    page = rec.open(rec.page())
    key = page.get_by_label("API key", exact=True)
    expect(key).to_be_visible()
    page.get_by_role("button", name="Use key").click()
    expect(page.locator(".error")).to_have_text("Enter a key.")
    key.fill("k-wrong")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator(".error")).to_have_text("That key was not accepted.")
    for name in STATES:
        expect(page.get_by_text(name)).to_have_count(0)
    assert not rec.calls("GET", "/functions"), "the API was called without a valid key"

    key.fill("k-right")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    assert page.evaluate("sessionStorage.getItem('faas.apiKey')") == "k-right"
    api_calls = rec.calls("GET", "/functions") + rec.calls("GET", "/invocations")
    assert api_calls and all(h.get("authorization") == "Bearer k-right" for _, _, h in api_calls)

    page.reload()
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    other = ui(n)
    other_page = other.open(other.page())
    expect(other_page.get_by_label("API key", exact=True)).to_be_visible()
    page.get_by_role("button", name="Forget key").click()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="greeter")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('faas.apiKey')") is None
    rec.assert_clean()
    other.assert_clean()


def test_a_key_beyond_latin1_works_in_the_browser(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node with FAAS_API_KEYS=ключ-1 (keys are compared as UTF-8 bytes, as `faas invoke` sends them).
    2. Open /ui and enter the key. Result: the functions show (a browser cannot put U+043A in a header as a
    character: the page sends the key's UTF-8 bytes); the page is not reported disconnected."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, None, kafka=False, env={"FAAS_API_KEYS": "ключ-1"}).wait_ready()
    rec = ui(n)
    page = rec.open(rec.page())
    page.get_by_label("API key", exact=True).fill("ключ-1")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    expect(page.locator("#offline")).to_be_hidden()
    rec.assert_clean()


def test_stale_key_is_refused_and_shows_no_data(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node with FAAS_API_KEYS=k-new; a tab whose sessionStorage holds k-old (a rotated key).
    2. Open /ui.
    Result: the key form with the message that the stored key was not accepted; no function shown, the key
    dropped from sessionStorage.
    """
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, None, kafka=False, env={"FAAS_API_KEYS": "k-new"}).wait_ready()
    rec = ui(n)
    rec.context.add_init_script("sessionStorage.setItem('faas.apiKey', 'k-old')")
    page = rec.page()
    page.goto(f"{n.url}/ui", wait_until="domcontentloaded")
    expect(page.locator(".error")).to_have_text("The stored key was not accepted; enter a valid one.")
    expect(page.get_by_role("link", name="greeter")).to_have_count(0)
    rec.assert_clean()


def test_disconnected_then_recovers_by_itself(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node (no Kafka); open /ui and wait for the list.
    2. Kill the node.
    3. Start a node on the same port.
    Result: 2 shows "disconnected" (the page keeps the last list); 3 brings back "connected" and the list
    without a reload. The only console errors are the browser's notes of refused connections.
    """
    root = write_project(tmp_path, MANIFEST, MODULES)
    first = nodes(root, None, kafka=False).wait_ready()
    rec = ui(first)
    page = rec.open(rec.page())
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    expect(page.locator("#conn")).to_contain_text("connected")
    page.evaluate("window.notReloaded = true")
    first.kill()
    expect(page.get_by_role("alert").filter(has_text="Disconnected")).to_be_visible()
    expect(page.locator("#conn")).to_have_text("disconnected")
    second = nodes(root, None, kafka=False, env={"FAAS_HTTP_PORT": str(first.port)})
    second.port, second.url = first.port, first.url
    second.wait_ready()
    expect(page.locator("#offline")).to_be_hidden()
    expect(page.locator("#conn")).to_contain_text("connected, updated")
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    assert page.evaluate("window.notReloaded") is True
    assert all("ERR_CONNECTION_REFUSED" in text for text, _ in rec.console_errors), rec.console_errors
    rec.assert_clean(expected_failures=("/",))


def test_stale_data_and_a_hung_node_are_said_and_a_function_that_comes_back_is_shown(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node (no Kafka, watching its manifest); open greeter's page. 2. A proxy in front of the node
    answers 502 to `GET /functions` (the page's route), then stops. 3. greeter leaves the manifest, then
    comes back unchanged. 4. The node is stopped (SIGSTOP: it accepts connections and answers nothing),
    then resumed.
    Result: 2 a banner says the listing could not be refreshed and the page is not stamped "updated"
    meanwhile (it used to claim fresh data it never got); it goes once the route answers. 3 the page says
    greeter is not in the manifest, then shows it productive again (it used to stay "not in this node's
    manifest" until reloaded). 4 the page shows "disconnected" (a poll unanswered for 8 s), and recovers
    by itself. The page's clock is moved on through the rounds and the 8 s rather than waited out."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    n = nodes(root, None, kafka=False).wait_ready()
    rec = ui(n)
    page = rec.page()
    page.clock.install()
    rec.open(page, f"#/fn/{GREETER}")
    facts = page.locator("[data-f=facts]")
    expect(facts).to_contain_text("productive")
    expect(page.locator("#conn")).to_contain_text("connected, updated")

    page.route(f"{n.url}/functions", lambda route: route.fulfill(status=502, body="bad gateway"))
    problem = page.locator("#problem")
    next_round(page)
    expect(problem).to_have_text(
        "Could not refresh: GET /functions answered HTTP 502. What is shown may be out of date."
    )
    stamped = page.locator("#conn").inner_text()
    for _ in range(2):  # one whole round at least, failed as well
        next_round(page, "/ui/session")
    expect(problem).to_be_visible()
    assert page.locator("#conn").inner_text() == stamped
    page.unroute(f"{n.url}/functions")
    next_round(page)
    expect(problem).to_be_hidden()

    manifest = root / "functions.yaml"
    greeter = MANIFEST[MANIFEST.index("  - name: greeter") : MANIFEST.index("  - name: breaker")]
    manifest.write_text(MANIFEST.replace(greeter, ""))
    expect(facts).to_contain_text("not in this node's manifest")
    manifest.write_text(MANIFEST)
    expect(facts).to_contain_text("productive")
    expect(page.get_by_role("heading", level=1)).to_have_text("greeter")

    os.kill(n.proc.pid, signal.SIGSTOP)
    try:
        next_round(page, "/ui/session")  # a round asks the node, which accepts and answers nothing
        expect(page.locator("#conn")).to_have_text(re.compile("^connected"))  # not said before the timeout
        page.clock.fast_forward(POLL_TIMEOUT_MS)  # ... for as long as the page waits for an answer
        expect(page.locator("#conn")).to_have_text("disconnected", timeout=20_000)
    finally:
        os.kill(n.proc.pid, signal.SIGCONT)
    next_round(page, "/ui/session")
    expect(page.locator("#conn")).to_contain_text("connected, updated")
    rec.assert_clean(expected_failures=("/functions",))


def test_what_readyz_says_shows_in_a_banner(
    tmp_path: Path, nodes: Callable[..., Node], ui: Callable[..., Recorder]
) -> None:
    """1. A node (no Kafka) whose manifest lists a secret it lacks for greeter (it serves the rest).
    2. Open /ui. 3. Write the secret's file.
    Result: 2 a banner says the node serves with problems, naming the missing secret (as /readyz does),
    while the list shows; 3 the banner goes away by itself, without a reload; no console error (the page
    reads readiness through its session, never a 503)."""
    manifest = MANIFEST.replace(
        "    events: [ui.hello]\n  - name: breaker",
        "    events: [ui.hello]\n    secrets: [ui_token]\n  - name: breaker",
        1,
    )
    root = write_project(tmp_path, manifest, MODULES)
    (root / "secrets").mkdir()
    n = nodes(root, None, kafka=False).wait_ready()
    rec = ui(n)
    page = rec.open(rec.page())
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    banner = page.locator("#health")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Serving, with problems")
    expect(banner).to_contain_text("ui_token")
    page.evaluate("window.notReloaded = true")
    (root / "secrets" / "ui_token").write_text("tok-0123456789\n")
    expect(banner).to_be_hidden()
    assert page.evaluate("window.notReloaded") is True
    rec.assert_clean()


def test_usable_at_390_pixels(node: Node, ui: Callable[..., Recorder]) -> None:
    """1. A 390 px wide viewport: open /ui, then greeter's page, invoke it.
    Result: nothing is wider than the screen (no sideways scrolling), cells show their column's name, the
    link, the form and the result are usable.
    """
    rec = ui(node, width=390)
    page = rec.open(rec.page())
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    state = row_of(page, "greeter").locator("td[data-label=State]")
    assert page.evaluate("e => getComputedStyle(e, '::before').content", state.element_handle()) == '"State"'
    open_function(page, "greeter")
    page.get_by_label("Payload").fill('{"word": "small"}')
    page.get_by_role("button", name="Invoke").click()
    expect(page.locator("[data-f=out]")).to_contain_text('"shout": "SMALL"')
    wait_for(
        lambda: page.evaluate("document.documentElement.scrollWidth") <= 390, 10, message="no sideways scroll"
    )
    rec.assert_clean()


@pytest.mark.parametrize("width", [1280, 390])
def test_text_contrast_on_every_view(node: Node, ui: Callable[..., Recorder], width: int) -> None:
    """1. Open each view (functions, a function's page with an invocation, events, failed).
    Result: every visible text has a contrast of at least 4.5:1 with its background (WCAG AA).
    """
    assert invoke(node, BREAKER, {"fail": True}).status_code == 500
    rec = ui(node, width=width)
    page = rec.open(rec.page())
    expect(page.locator("tbody[data-f=rows] tr")).to_have_count(len(STATES))
    views = [("", "tbody[data-f=rows] tr"), (f"#/fn/{BREAKER}", "table.records tr.failing")]
    views += [
        ("#/events", "td[data-label='Productive listeners'] a"),
        ("#/failed", "table.records tr.failing"),
    ]
    for hash_, ready in views:
        page.evaluate("h => { location.hash = h }", hash_ or "#/")
        expect(page.locator(ready).first).to_be_visible()
        bad = page.evaluate(CONTRAST_JS)
        assert not bad, f"{hash_ or '#/'}: {bad}"
    rec.assert_clean()
