// The faas dashboard (DESIGN.md section 16). Plain DOM, no framework, no build step.
//
// - Views are <template>s of index.html, chosen by the URL's hash (#/, #/fn/UUID, #/events, #/failed).
//   A view is built once when it is opened; polling then refreshes only its data parts, so a payload
//   being typed or an expanded log survives the refresh.
// - Every text reaches the page through textContent (el() below), never as HTML.
// - It calls only the routes this node serves (GET /ui/session lists them): a browser logs every non-2xx
//   answer as a console error, so a route that is missing shows "-" instead of being tried.
// - A fetch that fails (node down) or a poll unanswered for POLL_TIMEOUT_MS (node hung) shows
//   "disconnected"; polling goes on and the page recovers by itself. A round a data route answered with an
//   error is not stamped "updated": a banner says what is out of date.
// - A refresh redraws a table only while no text in it is selected, and gives focus back to the control
//   that had it (`data-key`): a traceback being copied or a keyboard user's place survives the refresh.
// - Each round starts with GET /ui/session: what /readyz says shows in a banner (a broker outage, a refused
//   manifest edit, a missing secret), without a 503 a browser would log.
"use strict";

const POLL_MS = 2000;
const POLL_TIMEOUT_MS = 8000;  // a GET unanswered this long: the node is taken as not answering (hung)
const WINDOW_MIN = 15;
const KEY_STORE = "faas.apiKey";

const state = { auth: false, routes: new Set(), key: null, online: null, view: null, timer: null,
  busy: false, again: false, failures: [] };

class Offline extends Error {}
class Unauthorized extends Error {}

// ---- DOM helpers ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = String(v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function parts(root) {
  const out = {};
  for (const e of root.querySelectorAll("[data-f]")) out[e.dataset.f] = e;
  return out;
}

function replace(target, ...children) {
  target.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

// Whether the user has text selected in `target` (copying a traceback, say): its refresh waits.
function selecting(target) {
  const sel = document.getSelection();
  return !!sel && !sel.isCollapsed && (target.contains(sel.anchorNode) || target.contains(sel.focusNode));
}

// `replace`, then focus back on the control with the `data-key` of the one focused before, if still there.
function redraw(target, ...children) {
  const active = document.activeElement;
  const key = active && target.contains(active) ? active.dataset.key : undefined;
  replace(target, ...children);
  if (key === undefined) return;
  const again = [...target.querySelectorAll("[data-key]")].find((e) => e.dataset.key === key);
  if (again) again.focus();
}

const dash = "-";
const show = (v) => (v === null || v === undefined || v === "" ? dash : String(v));
const ms = (v) => (typeof v === "number" ? (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms" : dash);
const when = (iso) => (typeof iso === "string" ? iso.replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, " UTC") : dash);
const pretty = (v) => JSON.stringify(v, null, 2);
// A log line or error message as text: the colour codes a handler's terminal would read (ANSI escape
// sequences) removed, not shown as a box and brackets.
const ansi = /\x1b\[[0-?]*[ -\/]*[@-~]/g;
const plain = (v) => (typeof v === "string" ? v.replace(ansi, "") : v);
const MESSAGE_CHARS = 4000; // as an invocation record's error message (record_json.MAX_ERROR_CHARS)
// An answer's error message as shown: a handler may raise one of megabytes, which the HTTP answer carries.
const message = (v) => {
  const text = show(plain(v));
  return text.length > MESSAGE_CHARS ? `${text.slice(0, MESSAGE_CHARS)}… (${text.length - MESSAGE_CHARS} more characters)` : text;
};

// ---- the API ----

// A header carries bytes, and the node compares a key's UTF-8 bytes; fetch refuses characters above U+00FF
// and sends the others as one byte each, so the key goes as a string of its UTF-8 bytes.
const utf8Bytes = (text) => Array.from(new TextEncoder().encode(text), (b) => String.fromCharCode(b)).join("");

function headers(extra) {
  const h = { Accept: "application/json", ...(extra || {}) };
  if (state.key) h.Authorization = "Bearer " + utf8Bytes(state.key);
  return h;
}

// Integers beyond 2**53 (what a double holds exactly), e.g. in a result, stay as the node sent them: read
// from their source text and written back as it by `pretty` (JSON.rawJSON). A browser without it rounds them.
function exactIntegers(key, value, context) {
  if (typeof value !== "number" || Number.isSafeInteger(value) || !context || !JSON.rawJSON) return value;
  return /^-?\d+$/.test(context.source) ? JSON.rawJSON(context.source) : value;
}

// {status, ok, body}; throws Offline when the node does not answer, Unauthorized on 401.
async function api(path, opts) {
  // Reads time out (a hung node); an invoke or a raise may rightly take as long as the function runs.
  const polling = !(opts && opts.method);
  const signal = polling && AbortSignal.timeout ? AbortSignal.timeout(POLL_TIMEOUT_MS) : undefined;
  let resp, text;
  try {
    resp = await fetch(path, { cache: "no-store", signal, ...(opts || {}), headers: headers(opts && opts.headers) });
    text = await resp.text();
  } catch (e) {
    setOnline(false);
    throw new Offline(String(e));
  }
  setOnline(true);
  let body = null;
  try { body = text ? JSON.parse(text, exactIntegers) : null; } catch (e) { body = null; }
  if (resp.status === 401 && path !== "/ui/session") {
    forgetKey("The key was not accepted any more; enter a valid one.");
    throw new Unauthorized();
  }
  return { status: resp.status, ok: resp.ok, body };
}

// Route templates compared without their parameter names: "/functions/{uuid}/revisions" ~ "/functions/{id}/revisions".
const shape = (route) => route.replace(/\{[^}]*\}/g, "{}");
const has = (route) => state.routes.has(shape(route));

async function getJSON(route, path) {
  if (!has(route)) return null;
  const r = await api(path);
  if (!r.ok) state.failures.push("GET " + path + " answered HTTP " + r.status);
  return r.ok ? r.body : null;
}

function setOnline(on) {
  if (state.online === on) return;
  state.online = on;
  document.getElementById("offline").hidden = on;
  const c = document.getElementById("conn");
  c.textContent = on ? "connected" : "disconnected";
  c.className = "conn " + (on ? "ok" : "bad");
}

function stamp() {
  if (!state.online) return;
  const c = document.getElementById("conn");
  c.textContent = "connected, updated " + new Date().toLocaleTimeString();
}

function problem(text) {
  const p = document.getElementById("problem");
  p.textContent = text || "";
  p.hidden = !text;
}

// ---- session and key ----

async function session() {
  const r = await api("/ui/session");
  if (!r.ok || !r.body) throw new Error("GET /ui/session answered " + r.status);
  health(r.body);
  state.auth = !!r.body.auth;
  state.routes = new Set((r.body.routes || []).map(shape));
  document.getElementById("signout").hidden = !(state.auth && state.key);
  return !!r.body.key_ok;
}

// What /readyz says (through the session, which always answers 200): a node that is not ready (its broker
// unreachable, still starting) or has problems (a manifest edit refused, a secret missing) says so here.
function health(body) {
  const h = document.getElementById("health");
  const problems = Array.isArray(body.problems) ? body.problems.map(String) : [];
  if (body.ready === false) {
    h.textContent = "Not ready: " + (problems.join("; ") || "see /readyz");
  } else if (problems.length) {
    h.textContent = "Serving, with problems: " + problems.join("; ");
  } else {
    h.textContent = "";
  }
  h.hidden = !h.textContent;
}

function forgetKey(message) {
  state.key = null;
  sessionStorage.removeItem(KEY_STORE);
  document.getElementById("signout").hidden = true;
  openView(loginView(message));
}

function loginView(message) {
  return {
    name: "login",
    build(root, p) {
      if (message) p.error.textContent = message;
      p.form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const key = p.key.value.trim();
        if (!key) { p.error.textContent = "Enter a key."; p.key.focus(); return; }
        state.key = key;
        let ok = false;
        try { ok = await session(); } catch (e) { p.error.textContent = "The node did not answer; try again."; state.key = null; return; }
        if (!ok) {
          state.key = null;
          p.error.textContent = "That key was not accepted.";
          p.key.select();
          return;
        }
        sessionStorage.setItem(KEY_STORE, key);
        document.getElementById("signout").hidden = false;
        route();
      });
      p.key.focus();
    },
    async update() {},
  };
}

// ---- invocation statistics (15 one-minute buckets, oldest first) ----

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
}

// From the node's /invocations/stats when it serves it, else computed from its recent records.
async function loadStats() {
  const byUuid = new Map();
  if (has("/invocations/stats")) {
    const body = await getJSON("/invocations/stats", "/invocations/stats?active=true");
    for (const s of (body && body.functions) || []) byUuid.set(s.uuid, s);
    return byUuid;
  }
  if (!has("/invocations")) return null;
  const body = await getJSON("/invocations", "/invocations?limit=1000");
  const now = Math.floor(Date.now() / 60000);
  const groups = new Map();
  for (const r of (body && body.invocations) || []) {
    const t = Date.parse(r.started_at);
    if (Number.isNaN(t)) continue;
    const slot = Math.floor(t / 60000) - (now - WINDOW_MIN + 1);
    if (slot < 0 || slot >= WINDOW_MIN) continue;
    if (!groups.has(r.uuid)) groups.set(r.uuid, Array.from({ length: WINDOW_MIN }, () => ({ d: [], f: 0 })));
    const b = groups.get(r.uuid)[slot];
    b.d.push(Number(r.duration_ms) || 0);
    if (!r.ok) b.f += 1;
  }
  for (const [uuid, buckets] of groups) {
    const all = buckets.flatMap((b) => b.d).sort((a, b) => a - b);
    const minutes = buckets.map((b) => {
      const d = b.d.slice().sort((x, y) => x - y);
      return { count: d.length, failures: b.f, p50_ms: percentile(d, 0.5), p99_ms: percentile(d, 0.99) };
    });
    byUuid.set(uuid, { count: all.length, failures: minutes.reduce((a, m) => a + m.failures, 0),
      p50_ms: percentile(all, 0.5), p99_ms: percentile(all, 0.99), minutes });
  }
  return byUuid;
}

const EMPTY_STATS = { count: 0, failures: 0, p50_ms: null, p99_ms: null, minutes: [] };

function countChart(stats) {
  const W = 90, H = 24, n = WINDOW_MIN, bw = W / n;
  const mins = stats.minutes || [];
  const max = Math.max(1, ...mins.map((m) => m.count || 0));
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": `${stats.count} invocations in ${WINDOW_MIN} minutes, per minute` });
  s.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
  mins.forEach((m, i) => {
    const c = m.count || 0, f = m.failures || 0;
    if (!c) return;
    const h = Math.max(1.5, (c / max) * (H - 2)), fh = (f / c) * h;
    s.append(svg("rect", { x: i * bw + 0.5, y: H - h, width: bw - 1, height: h - fh, class: "bar" }));
    if (f) s.append(svg("rect", { x: i * bw + 0.5, y: H - fh, width: bw - 1, height: fh, class: "bar-fail" }));
  });
  return s;
}

function durationChart(stats) {
  const W = 90, H = 24, n = WINDOW_MIN, step = (W - 4) / (n - 1);
  const mins = stats.minutes || [];
  const max = Math.max(0.001, ...mins.map((m) => m.p99_ms || 0));
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": `p50 ${ms(stats.p50_ms)}, p99 ${ms(stats.p99_ms)} over ${WINDOW_MIN} minutes, per minute` });
  s.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
  for (const [key, cls] of [["p99_ms", "p99"], ["p50_ms", "p50"]]) {
    const pts = mins.map((m, i) => (typeof m[key] === "number"
      ? `${(2 + i * step).toFixed(1)},${(H - 1 - (m[key] / max) * (H - 3)).toFixed(1)}` : null)).filter(Boolean);
    if (pts.length === 1) {
      const [x, y] = pts[0].split(",");
      s.append(svg("circle", { cx: x, cy: y, r: 1.8, class: cls }));
    } else if (pts.length) {
      s.append(svg("polyline", { points: pts.join(" "), class: cls }));
    }
  }
  return s;
}

// ---- the functions list ----

function fnLink(f, key) {
  return el("a", { href: "#/fn/" + encodeURIComponent(f.uuid), text: f.name, "data-key": key || "fn:" + f.uuid });
}

function stateBadge(value) {
  return el("span", { class: "state state-" + String(value).replace(/[^a-z]/g, ""), text: show(value) });
}

function revisionText(f) {
  return typeof f.revision === "number" ? "r" + f.revision : dash;
}

function modifiedText(f) {
  if (f.modified === true) return el("span", { class: "warn", text: "modified" });
  if (f.modified === false) return "no";
  return dash;
}

function schedulesCell(f) {
  const list = f.schedules || [];
  if (!list.length) return dash;
  return el("ul", { class: "plain" }, list.map((s) => {
    const last = s.last;
    const lastText = last ? (last.ok ? "ok" : "failed" + (last.error ? " (" + (last.error.type || last.error) + ")" : ""))
      + " at " + when(last.at) : "none yet";
    return el("li", {}, el("code", { text: s.cron }), " next ", when(s.next_fire), el("br"),
      el("span", { class: last && !last.ok ? "error" : "hint", text: "last: " + lastText }));
  }));
}

// One wrapper per cell: below 760 px a cell is a grid of its label and this wrapper.
// Event types, each isolated (<bdi>): a right-to-left override in one must not reverse the ones after it.
function eventList(types) {
  if (!types || !types.length) return dash;
  const out = el("span");
  types.forEach((t, i) => out.append(...(i ? [", "] : []), el("bdi", { text: String(t) })));
  return out;
}

function td(label, ...children) {
  return el("td", { "data-label": label }, el("div", {}, ...children));
}

function functionsView() {
  let last = "";
  return {
    name: "functions",
    build() {},
    async update(root, p) {
      const [list, stats] = await Promise.all([getJSON("/functions", "/functions"), loadStats()]);
      if (!list) return;
      const fns = list.functions || [];
      const sig = JSON.stringify([fns, stats && [...stats]]);
      if (sig === last || selecting(p.rows)) return;
      last = sig;
      p.empty.hidden = fns.length > 0;
      redraw(p.rows, fns.map((f) => {
        const st = stats ? stats.get(f.uuid) || EMPTY_STATS : null;
        const failing = st && st.failures > 0;
        return el("tr", { class: failing ? "failing" : null, "data-uuid": f.uuid },
          td("Function", fnLink(f)),
          td("State", stateBadge(f.state)),
          td("Revision", revisionText(f)),
          td("Modified", modifiedText(f)),
          td("Events", eventList(f.events)),
          td("Instances", show(f.instances)),
          td("Schedules", schedulesCell(f)),
          td("Invocations", st ? el("span", { class: "metric" }, countChart(st), el("span", { text: st.count + " in 15 min" })) : dash),
          td("Failures", st ? el("span", { class: failing ? "error strong" : "", text: String(st.failures) }) : dash),
          td("Duration", st ? el("span", { class: "metric" }, durationChart(st),
            el("span", { text: "p50 " + ms(st.p50_ms) + " / p99 " + ms(st.p99_ms) })) : dash));
      }));
    },
  };
}

// ---- invocation records (a function's page, the failed view) ----

const cancelled = (r) => !r.ok && !!r.error && r.error.type === "Cancelled";

function outcome(r) {
  if (r.ok) return el("span", { class: "ok", text: "ok" });
  if (cancelled(r)) return el("span", { class: "hint", text: "Cancelled" }); // it did not fail
  const type = (r.error && r.error.type) || "failed";
  return el("span", { class: "error strong", text: type });
}

function recordDetails(r) {
  const logs = r.logs || [];
  return el("div", { class: "details" },
    r.error ? el("p", { class: "error box" }, el("strong", { text: show(r.error.type) + ": " }), el("bdi", { text: message(r.error.message) })) : null,
    el("p", { class: "hint", text: `invocation ${show(r.invocation_id)} · instance ${show(r.instance_id)} · node ${show(r.node)}`
      + ` · trace ${show(r.trace_id)}` + (r.event_id ? ` · event id ${r.event_id}` : "") }),
    logs.length
      ? el("ol", { class: "logs" }, logs.map((l) => el("li", {},
        el("span", { class: "hint", text: when(l.time) + " " }), el("span", { class: "lvl lvl-" + String(l.level).toLowerCase(), text: show(l.level) }),
        " ", el("span", { class: "msg", text: show(plain(l.message)) + (l.truncated ? " …" : "") }))))
      : el("p", { class: "hint", text: "No log lines." }));
}

// The element id of an invocation's detail row: its id with `_` and every character outside [A-Za-z0-9-]
// written as `_<hex>_`, one to one (dropping them made `s:10:T` and `s1:0:T` both `inv-s10T`); a second row
// of one invocation in a table (a tick fired twice) gets `_2`, and so on.
function detailIdOf(id, used) {
  const base = "inv-" + id.replace(/[^A-Za-z0-9-]/g, (c) => "_" + c.charCodeAt(0).toString(16) + "_");
  let name = base;
  for (let n = 2; used.has(name); n++) name = base + "_" + n;
  used.add(name);
  return name;
}

// A table of records; `expanded` (a Set of invocation ids) survives re-renders.
function recordsTable(records, expanded, withFunction) {
  if (!records.length) return el("p", { class: "hint", text: "No invocations yet." });
  const head = ["Started", ...(withFunction ? ["Function"] : []), "Trigger", "Outcome", "Duration", "Cold", "Attempt", "Revision", "Logs"];
  const body = el("tbody");
  const used = new Set();
  for (const r of records) {
    const id = String(r.invocation_id);
    const open = expanded.has(id);
    const detailId = detailIdOf(id, used);
    const detail = el("tr", { id: detailId, class: "detail" }, el("td", { colspan: head.length }, recordDetails(r)));
    const what = ` logs and error of the invocation at ${when(r.started_at)}`;
    const btn = el("button", { type: "button", class: "small", "aria-expanded": open ? "true" : "false", "aria-controls": detailId,
      "aria-label": (open ? "Hide" : "Show") + what, text: open ? "Hide" : "Show", "data-key": "logs:" + id });
    btn.addEventListener("click", () => {
      const now = !expanded.has(id);
      if (now) expanded.add(id); else expanded.delete(id);
      btn.setAttribute("aria-expanded", now ? "true" : "false");
      btn.setAttribute("aria-label", (now ? "Hide" : "Show") + what);
      btn.textContent = now ? "Hide" : "Show";
      detail.hidden = !now;
    });
    body.append(el("tr", { class: r.ok || cancelled(r) ? null : "failing" },
      td("Started", when(r.started_at)),
      withFunction ? td("Function", el("a", { href: "#/fn/" + encodeURIComponent(r.uuid || ""), text: show(r.function), "data-key": "fn:" + id })) : null,
      td("Trigger", show(r.trigger), ...(r.event ? [" (", el("bdi", { text: String(r.event) }), ")"] : [])),
      td("Outcome", outcome(r), r.error && r.error.message ? el("span", { class: "hint clip", text: " " + plain(r.error.message) }) : null),
      td("Duration", ms(r.duration_ms)),
      td("Cold", r.cold_start ? "cold" : "warm"),
      td("Attempt", show(r.attempt)),
      td("Revision", typeof r.revision === "number" ? "r" + r.revision : dash),
      td("Logs", btn)));
    detail.hidden = !open;
    body.append(detail);
  }
  return el("table", { class: "list records" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col", text: h })))), body);
}

function noRecords() {
  return el("p", { class: "hint", text: "- (this node does not keep invocation records)" });
}

// ---- a function's page ----

function facts(entries) {
  return entries.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]);
}

// What the node's parser (orjson) refuses and JSON.parse takes: a number beyond a double (1e999 is
// Infinity here) and a lone surrogate ("\ud800") in a string or a key.
const loneSurrogate = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
function strictJson(key, value) {
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error("a number too large for JSON");
  for (const text of [key, value]) {
    if (typeof text === "string" && loneSurrogate.test(text)) throw new Error("a lone surrogate (\\u" +
      text.match(loneSurrogate)[0].charCodeAt(0).toString(16) + ") is not UTF-8");
  }
  return value;
}

function readPayload(textarea, out) {
  const raw = textarea.value.trim();
  if (!raw) return { body: undefined };
  try {
    JSON.parse(raw, strictJson);
  } catch (e) {
    replace(out, el("p", { class: "error" }, el("strong", { text: "Invalid JSON, not sent: " }), e.message));
    textarea.setAttribute("aria-invalid", "true");
    textarea.focus();
    return null;
  }
  textarea.removeAttribute("aria-invalid");
  return { body: raw };
}

// A type a URL cannot carry as a path segment: a browser takes "." and ".." (also as %2E) as path steps.
const pathStep = (type) => type === "." || type === "..";

// `POST /events/{type}`; a type ending in "/listeners" would name the listeners route there, and "." or
// ".." cannot be a segment (`pathStep`), so those go through `POST /events` in binary mode (percent-encoded
// `ce-type`, a fresh `ce-id`), as the README says.
function raiseRequest(type, body) {
  const json = { "Content-Type": "application/json" };
  if (!/\/listeners$/.test(type) && !pathStep(type)) return ["/events/" + encodeURIComponent(type), { method: "POST", body, headers: json }];
  const id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  const ce = { "ce-specversion": "1.0", "ce-type": encodeURIComponent(type), "ce-id": id, "ce-source": "faas-dashboard" };
  return ["/events", { method: "POST", body: body === undefined ? "null" : body, headers: { ...json, ...ce } }];
}

function ctrlEnter(textarea, form) {
  textarea.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); }
  });
}

function errorOut(r) {
  const err = (r.body && r.body.error) || {};
  return el("div", {},
    el("p", { class: "error box" }, el("strong", { text: show(err.type || "HTTP " + r.status) + ": " }), el("bdi", { text: message(err.message) })),
    el("p", { class: "hint", text: "HTTP " + r.status }));
}

function functionView(uuid) {
  const expanded = new Set();
  let lastRecords = "", lastRevisions = "", lastFacts = "";
  let target = uuid;  // the manifest's spelling of the uuid, once the listing has shown it
  return {
    name: "function",
    build(root, p) {
      ctrlEnter(p.payload, p.form);
      p.form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        if (p.invoke.disabled) return;  // Ctrl+Enter on a function that is not served
        const payload = readPayload(p.payload, p.out);
        if (!payload) return;
        const button = p.invoke;
        button.disabled = true;
        replace(p.out, el("p", { class: "hint", text: "Invoking…" }));
        try {
          const r = await api("/functions/" + encodeURIComponent(target) + "/invoke",
            { method: "POST", body: payload.body, headers: { "Content-Type": "application/json" } });
          if (r.ok && r.body) {
            replace(p.out, el("p", { class: "ok" }, el("strong", { text: "ok" }),
              ` in ${ms(r.body.duration_ms)}${r.body.cold_start ? ", cold start" : ""} · invocation ${show(r.body.invocation_id)}`),
            el("pre", { class: "code", text: pretty(r.body.result) }));
          } else {
            replace(p.out, errorOut(r));
          }
          tick();
        } catch (e) {
          if (e instanceof Offline) replace(p.out, el("p", { class: "error", text: "The node did not answer." }));
        } finally {
          button.disabled = false;
        }
      });
    },
    async update(root, p) {
      const list = await getJSON("/functions", "/functions");
      if (!list) return;
      const f = (list.functions || []).find((x) => String(x.uuid).toLowerCase() === uuid.toLowerCase());
      if (f) target = f.uuid;
      if (!f) {
        lastFacts = lastRevisions = lastRecords = "";  // a function that comes back is drawn again
        p.name.textContent = "Unknown function";
        replace(p.facts, facts([["uuid", uuid], ["state", "not in this node's manifest"]]));
        p.invoke.disabled = true;  // a try would only earn a 404
        p.invokehint.textContent = "Not invocable: this node has no function with this uuid.";
        return;
      }
      const [revs, recs] = await Promise.all([
        getJSON("/functions/{uuid}/revisions", "/functions/" + encodeURIComponent(f.uuid) + "/revisions"),
        getJSON("/invocations", "/invocations?limit=50&function=" + encodeURIComponent(f.uuid)),
      ]);
      if (state.view && state.view.parts === p) document.title = f.name + " · faas dashboard";  // not if left meanwhile
      p.name.textContent = f.name;
      // Only productive functions are invocable over HTTP; a try would only earn a 404.
      const invocable = f.state === "productive";
      p.invoke.disabled = !invocable;
      p.invokehint.textContent = invocable ? "Ctrl+Enter in the field invokes too."
        : `Not invocable here: only productive functions are served (try it with: faas invoke ${f.name}).`;
      const revisions = revs ? revs.revisions || [] : null;
      const live = typeof f.revision === "number" ? f.revision
        : revisions && revisions.length && revisions[0].action === "deploy" ? revisions[0].revision : null;
      const sigFacts = JSON.stringify([f, live]);
      if (sigFacts !== lastFacts) {
        lastFacts = sigFacts;
        replace(p.facts, facts([
          ["State", stateBadge(f.state)], ["UUID", el("code", { text: f.uuid })],
          ["Live revision", typeof live === "number" ? "r" + live : dash], ["Modified", modifiedText(f)],
          ["Deployed at", when(f.deployed_at)], ["Events", eventList(f.events)],
          ["Instances", show(f.instances)], ["Schedules", schedulesCell(f)]]));
        const liveRev = revisions && revisions.find((r) => r.revision === live);
        p.spec.textContent = pretty(liveRev && liveRev.spec ? liveRev.spec
          : { name: f.name, uuid: f.uuid, state: f.state, events: f.events, schedules: f.schedules });
      }
      const sigRevs = JSON.stringify([revisions, live]);
      if (sigRevs !== lastRevisions && !selecting(p.revisions)) {
        lastRevisions = sigRevs;
        redraw(p.revisions, revisions === null ? el("p", { class: "hint", text: dash + " (this node keeps no revisions)" })
          : !revisions.length ? el("p", { class: "hint", text: "Never deployed." })
          : el("table", { class: "list" },
            el("thead", {}, el("tr", {}, ["Revision", "Action", "Deployed at", "By", "Message"].map((h) => el("th", { scope: "col", text: h })))),
            el("tbody", {}, revisions.map((r) => el("tr", { class: r.revision === live ? "live" : null },
              td("Revision", "r" + r.revision, r.revision === live ? el("span", { class: "badge", text: "live" }) : null),
              td("Action", show(r.action) + (r.rollback_of ? " (rollback of r" + r.rollback_of + ")" : "")),
              td("Deployed at", when(r.deployed_at)), td("By", show(r.deployed_by)), td("Message", show(r.message)))))));
      }
      const records = recs ? recs.invocations || [] : null;
      const sigRecs = JSON.stringify(records);
      if (sigRecs !== lastRecords && !selecting(p.invocations)) {
        lastRecords = sigRecs;
        redraw(p.invocations, records === null ? noRecords() : recordsTable(records, expanded, false));
      }
    },
  };
}

// ---- events ----

function replyOut(r) {
  const reply = r.body || {};
  const results = reply.results || [];
  const err = reply.error;
  return el("div", {},
    el("p", { class: reply.ok ? "ok" : "error" }, el("strong", { text: reply.ok ? "ok" : "failed" }),
      // Each text of the event in an isolate of its own: a right-to-left override in one must not
      // reverse what follows it (the id, the status) on the page.
      " · event ", el("bdi", { text: show(reply.event) }), " · id ", el("bdi", { text: show(reply.id) }),
      ` · HTTP ${r.status}`),
    err ? el("p", { class: "error box" }, el("strong", { text: show(err.type) + ": " }), el("bdi", { text: message(err.message) }),
      err.function ? el("span", {}, " (function ", el("bdi", { text: err.function }), ")") : "") : null,
    results.length ? el("table", { class: "list" },
      el("thead", {}, el("tr", {}, ["Function", "Outcome", "Duration", "Result"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, results.map((x) => el("tr", {},
        td("Function", show(x.function)), td("Outcome", x.ok ? el("span", { class: "ok", text: "ok" }) : el("span", { class: "error", text: "failed" })),
        td("Duration", ms(x.duration_ms)), td("Result", el("pre", { class: "code inline", text: pretty(x.result) }))))))
      : el("p", { class: "hint", text: err ? "No listener finished: the failure above ended the chain." : "No listener answered." }),
    el("details", {}, el("summary", { text: "Combined reply (JSON)" }), el("pre", { class: "code", text: pretty(reply) })));
}

function eventsView() {
  let last = "";
  let asked = "";  // what the listeners were last asked for: the types and each function's serving state
  let listeners = [];
  let rounds = 0;
  return {
    name: "events",
    build(root, p) {
      ctrlEnter(p.payload, p.form);
      p.form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const type = p.type.value.trim();
        if (!type) {
          replace(p.out, el("p", { class: "error", text: "Enter an event type." }));
          p.type.focus();
          return;
        }
        const payload = readPayload(p.payload, p.out);
        if (!payload) return;
        const button = p.form.querySelector("button[type=submit]");
        button.disabled = true;
        replace(p.out, el("p", { class: "hint", text: "Raising…" }));
        try {
          const r = await api(...raiseRequest(type, payload.body));
          replace(p.out, r.body && "results" in r.body ? replyOut(r) : errorOut(r));
        } catch (e) {
          if (e instanceof Offline) replace(p.out, el("p", { class: "error", text: "The node did not answer." }));
        } finally {
          button.disabled = false;
        }
      });
    },
    async update(root, p) {
      const list = await getJSON("/functions", "/functions");
      if (!list) return;
      const types = [...new Set((list.functions || []).flatMap((f) => f.events || []))].sort();
      // Listeners change only with what the node serves: asked again when a function's name, state, revision or
      // events change, not every round (one request per type); and once a minute all the same, in case the
      // listing and the listeners were read either side of a change undone within a round.
      const serving = JSON.stringify([types, (list.functions || []).map((f) => [f.uuid, f.name, f.state, f.revision, f.events])]);
      if (serving !== asked || listeners.some((l) => !l) || ++rounds % 30 === 0) {
        listeners = await Promise.all(types.map((t) => (pathStep(t)
          // No URL names this type's listeners route (`pathStep`): the same answer, from the listing.
          ? { functions: (list.functions || []).filter((f) => f.state === "productive" && (f.events || []).includes(t))
            .map((f) => ({ name: f.name, uuid: f.uuid })) }
          : getJSON("/events/{type}/listeners", "/events/" + encodeURIComponent(t) + "/listeners"))));
        asked = serving;
      }
      const sig = JSON.stringify([types, listeners]);
      if (sig === last || selecting(p.types)) return;
      last = sig;
      replace(p.typelist, types.map((t) => el("option", { value: t })));
      if (!types.length) { replace(p.types, el("p", { class: "hint", text: "No function listens to an event." })); return; }
      redraw(p.types, el("table", { class: "list" },
        el("thead", {}, el("tr", {}, ["Event type", "Productive listeners", ""].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, types.map((t, i) => {
          const fns = listeners[i] ? listeners[i].functions || [] : null;
          const use = el("button", { type: "button", class: "small", text: "Raise…", "aria-label": "Raise " + t, "data-key": "raise:" + t });
          use.addEventListener("click", () => { p.type.value = t; p.payload.focus(); });
          return el("tr", {},
            td("Event type", el("code", { text: t })),
            td("Productive listeners", fns === null ? dash : fns.length
              ? fns.flatMap((f, j) => [j ? ", " : null, fnLink(f, "fn:" + t + ":" + f.uuid)]) : "none"),
            td("", use));
        }))));
    },
  };
}

// ---- failed invocations ----

function failedView() {
  const expanded = new Set();
  let last = "";
  return {
    name: "failed",
    build() {},
    async update(root, p) {
      if (!has("/invocations")) { if (last !== "none") { last = "none"; replace(p.failed, noRecords()); } return; }
      // A cancelled invocation (a chain's abort, a caller that hung up, a stop) did not fail: not listed.
      const body = await getJSON("/invocations", "/invocations?ok=false&cancelled=false&limit=100");
      if (!body) return;
      const records = body.invocations || [];
      const sig = JSON.stringify(records);
      if (sig === last || selecting(p.failed)) return;
      last = sig;
      redraw(p.failed, records.length ? recordsTable(records, expanded, true)
        : el("p", { class: "hint", text: "No failed invocations." }));
    },
  };
}

// ---- routing and polling ----

function openView(view) {
  const main = document.getElementById("main");
  const tpl = document.getElementById("t-" + (view.name === "function" ? "function" : view.name));
  const root = tpl.content.cloneNode(true);
  const p = parts(root);
  replace(main, root);
  view.root = main;
  view.parts = p;
  state.view = view;
  view.build(main, p);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view.name !== "function") document.title = "faas dashboard";
}

function viewFor(hash) {
  const m = /^#\/fn\/([^/]+)$/.exec(hash);
  if (m) {
    let uuid = m[1];
    try { uuid = decodeURIComponent(uuid); } catch (e) { /* a malformed escape: shown as typed */ }
    return functionView(uuid);
  }
  if (hash === "#/events") return eventsView();
  if (hash === "#/failed") return failedView();
  return functionsView();
}

function route() {
  if (state.auth && !state.key) { openView(loginView()); return; }
  openView(viewFor(location.hash));
  tick();
}

async function tick() {
  clearTimeout(state.timer);
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    // Every round asks the session first (always 200): the node's readiness for the banner, and whether
    // it now wants a key (restarted with FAAS_API_KEYS) before a data route would answer 401.
    const ok = await session();
    if (state.auth && !ok) {
      if (state.view && state.view.name !== "login") {
        forgetKey(state.key ? "The key was not accepted any more; enter a valid one." : "This node now needs an API key.");
      }
    } else if (state.view && state.view.name === "login" && (!state.auth || state.key)) {
      openView(viewFor(location.hash));
    }
    const view = state.view;
    if (view && view.name !== "login" && !document.hidden) {  // a hidden tab does not poll the node
      state.failures = [];
      await view.update(view.root, view.parts);
      if (state.view === view && state.failures.length) {
        problem("Could not refresh: " + state.failures[0] + ". What is shown may be out of date.");
      } else if (state.view === view) {
        problem("");
        stamp();
      }
    }
  } catch (e) {
    if (!(e instanceof Offline) && !(e instanceof Unauthorized)) problem("Could not show this view: " + e.message);
  } finally {
    state.busy = false;
    state.timer = setTimeout(tick, state.again ? 0 : POLL_MS);
    state.again = false;
  }
}

async function start() {
  document.getElementById("signout").addEventListener("click", () => forgetKey("Key forgotten."));
  state.key = sessionStorage.getItem(KEY_STORE);
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  let ok = false;
  try {
    ok = await session();
  } catch (e) {
    // Offline from the start: show the last view empty; polling resyncs once the node answers.
    openView(viewFor(location.hash));
    tick();
    return;
  }
  if (state.auth && !ok) {
    const hadKey = !!state.key;
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    openView(loginView(hadKey ? "The stored key was not accepted; enter a valid one." : ""));
    return;
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
