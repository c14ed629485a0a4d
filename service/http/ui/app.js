// stepd web UI: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every action is an RPC through /api/{service}/{method}; the server decides
// who may do what, and the page shows only the buttons the key's role may use.
"use strict";

const WORKFLOWS = "stepd.v1.WorkflowService";
const STATUSES = ["PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "FAILED", "CANCELLED"];
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const LIST_REFRESH_MS = 2000;
const RUN_REFRESH_MS = 1000;

let me = null; // {keys_required, rights, role?, name?}
let timer = null; // the current page's refresh

// -- helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function rpc(method, body, service = WORKFLOWS) {
  const answer = await fetch(`/api/${service}/${method}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "Stepd-UI": "1" },
    body: JSON.stringify(body || {}),
  });
  const text = await answer.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { error: text }; }
  if (!answer.ok) throw new ApiError(answer.status, data.error || answer.statusText);
  return data;
}

function may(right) { return me !== null && me.rights.includes(right); }
function statusName(value) { return (value || "").replace(/^RUN_STATUS_/, ""); }
function eventName(value) { return (value || "").replace(/^RUN_EVENT_TYPE_/, "").toLowerCase(); }
function badge(status) {
  const name = statusName(status);
  return h("span", { class: `badge ${name.toLowerCase()}`, "data-status": name }, name.toLowerCase());
}
function when(ts) { return ts ? new Date(ts).toLocaleString() : ""; }
function millis(ts) { return ts ? new Date(ts).getTime() : null; }
function seconds(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  return `${(ms / 3600000).toFixed(1)} h`;
}
function payloadText(payload) {
  if (!payload) return "";
  if (payload.json === undefined) return payload.encoding ? `(${payload.encoding} data)` : "null";
  try { return JSON.stringify(JSON.parse(payload.json), null, 2); } catch (e) { return payload.json; }
}
function shorten(text, n = 120) { return text.length > n ? `${text.slice(0, n - 1)}…` : text; }
function query() {
  const at = location.hash.indexOf("?");
  return new URLSearchParams(at === -1 ? "" : location.hash.slice(at + 1));
}
function notice(message, isError = false) {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = !message;
}
function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes);
}
function stopRefresh() { if (timer !== null) { clearInterval(timer); timer = null; } }
function refreshEvery(ms, work) {
  stopRefresh();
  timer = setInterval(() => { work().catch(() => {}); }, ms);
}
function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A confirmation dialog; `fields` are extra inputs; `act` runs on confirm and
// may throw to keep the dialog open with the error.
function confirmAction(title, fields, act) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").replaceChildren(...fields);
  const error = document.getElementById("confirm-error");
  error.hidden = true;
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");
  const fresh = yes.cloneNode(true);
  yes.replaceWith(fresh);
  no.onclick = () => dialog.close();
  fresh.addEventListener("click", async (event) => {
    event.preventDefault();
    fresh.disabled = true;
    try {
      await act();
      dialog.close();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      fresh.disabled = false;
    }
  });
  dialog.showModal();
}

// -- sign-in -------------------------------------------------------------------

async function loadMe() {
  const answer = await fetch("/api/me", { credentials: "same-origin" });
  if (answer.status === 401) { me = null; return false; }
  me = await answer.json();
  const who = document.getElementById("who");
  if (me.keys_required) {
    who.replaceChildren(
      `${me.name} (${me.role})`,
      h("button", { onclick: signOut, id: "sign-out" }, "Sign out"),
    );
  } else {
    who.textContent = "open on loopback (no keys)";
  }
  return true;
}

async function signOut() {
  await fetch("/ui/session", { method: "DELETE", credentials: "same-origin" });
  location.hash = "#/runs";
  location.reload();
}

function signInPage() {
  const input = h("input", { type: "password", id: "api-key", placeholder: "stepd_…", autocomplete: "off" });
  const error = h("p", { class: "error", hidden: true });
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    const answer = await fetch("/ui/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ api_key: input.value }),
    });
    if (!answer.ok) {
      error.textContent = (await answer.json()).error;
      error.hidden = false;
      return;
    }
    await loadMe();
    route();
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "This server needs an API key. The key stays in an HttpOnly cookie for this site."),
  input, error, h("button", { class: "primary", type: "submit", id: "sign-in" }, "Sign in"));
  show(form);
}

// -- runs ------------------------------------------------------------------------

function runsRequest(params) {
  const request = { page_size: 50 };
  if (params.get("workflow")) request.workflow_name = params.get("workflow");
  if (params.get("status")) request.statuses = [`RUN_STATUS_${params.get("status")}`];
  if (params.get("parent")) request.parent_run_id = params.get("parent");
  if (params.get("after")) request.create_time_after = new Date(params.get("after")).toISOString();
  if (params.get("before")) request.create_time_before = new Date(params.get("before")).toISOString();
  return request;
}

function runRow(run) {
  const started = millis(run.create_time);
  const ended = millis(run.end_time);
  return h("tr", { "data-run": run.run_id },
    h("td", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.run_id)),
    h("td", {}, run.workflow_name, run.workflow_version ? h("span", { class: "muted" }, ` ${run.workflow_version}`) : ""),
    h("td", {}, badge(run.status)),
    h("td", {}, when(run.create_time)),
    h("td", {}, ended ? seconds(ended - started) : ""),
    h("td", { class: "mono" }, run.parent_run_id
      ? h("a", { href: `#/runs/${encodeURIComponent(run.parent_run_id)}` }, shorten(run.parent_run_id, 14)) : ""));
}

async function runsPage() {
  const params = query();
  const field = (name, label, attrs = {}) =>
    h("label", {}, label, h("input", { name, value: params.get(name) || "", ...attrs }));
  const status = h("select", { name: "status" }, h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s.toLowerCase())));
  const live = h("input", { type: "checkbox", id: "live", checked: params.get("live") !== "0" });
  const filters = h("form", { class: "filters", id: "run-filters", onsubmit: (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(event.target)) if (value) next.set(name, value);
    if (!live.checked) next.set("live", "0");
    location.hash = `#/runs?${next}`;
  } },
  field("workflow", "Workflow"), h("label", {}, "Status", status), field("parent", "Parent run"),
  field("after", "Created after", { type: "datetime-local" }),
  field("before", "Created before", { type: "datetime-local" }),
  h("button", { class: "primary", type: "submit" }, "Filter"),
  h("label", {}, "Live", live));
  const lookup = h("input", { id: "lookup", placeholder: "run id or idempotency key" });
  const lookupForm = h("form", { class: "filters", onsubmit: async (event) => {
    event.preventDefault();
    const id = lookup.value.trim();
    if (!id) return;
    try {
      await rpc("GetRun", { run_id: id });
      location.hash = `#/runs/${encodeURIComponent(id)}`;
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) { notice(e.message, true); return; }
      const byKey = await rpc("ListRuns", { idempotency_key: id, page_size: 1 }).catch(() => ({}));
      const found = (byKey.runs || [])[0];
      if (found) location.hash = `#/runs/${encodeURIComponent(found.run_id)}`;
      else notice(`No run has the id or idempotency key ${shorten(id, 60)}.`, true);
    }
  } }, h("label", {}, "Open a run", lookup), h("button", { type: "submit" }, "Open"));
  const body = h("tbody", { id: "runs" });
  const table = h("table", {}, h("thead", {}, h("tr", {},
    ["Run", "Workflow", "Status", "Created", "Took", "Parent"].map((t) => h("th", {}, t)))), body);
  const older = h("button", { id: "older", disabled: true }, "Older →");
  const newest = h("button", { id: "newest" }, "Newest");
  const tokens = [""];
  let page = 0;
  async function load() {
    const request = runsRequest(params);
    if (tokens[page]) request.page_token = tokens[page];
    const answer = await rpc("ListRuns", request);
    const runs = answer.runs || [];
    body.replaceChildren(...(runs.length ? runs.map(runRow)
      : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No runs match."))]));
    tokens[page + 1] = answer.next_page_token || "";
    older.disabled = !answer.next_page_token;
  }
  older.onclick = () => { page += 1; load().catch((e) => notice(e.message, true)); };
  newest.onclick = () => { page = 0; load().catch((e) => notice(e.message, true)); };
  show(h("h1", {}, "Runs"), filters, lookupForm, table, h("div", { class: "pager" }, newest, older));
  await load();
  if (live.checked) refreshEvery(LIST_REFRESH_MS, () => (page === 0 ? load() : Promise.resolve()));
}

// -- one run -------------------------------------------------------------------

async function allEvents(runId) {
  const events = [];
  let token = "";
  do {
    const answer = await rpc("ListRunEvents", { run_id: runId, page_size: 1000, page_token: token });
    events.push(...(answer.events || []));
    token = answer.next_page_token || "";
  } while (token);
  return events;
}

function timeline(run, events) {
  const steps = events.filter((e) => e.type === "RUN_EVENT_TYPE_STEP_COMPLETED" || e.type === "RUN_EVENT_TYPE_STEP_FAILED");
  if (!steps.length) return h("p", { class: "muted" }, "No steps recorded yet.");
  const begin = millis(run.create_time);
  const end = Math.max(millis(run.end_time) || Date.now(), ...steps.map((s) => millis(s.step_end_time) || millis(s.time)));
  const span = Math.max(end - begin, 1);
  return h("div", { class: "timeline", id: "timeline" }, steps.map((s) => {
    const from = millis(s.step_start_time) || millis(s.time);
    const to = millis(s.step_end_time) || millis(s.time);
    const bar = h("div", { class: `bar ${s.attempt_only ? "retry" : s.error ? "failed" : ""}` });
    bar.style.left = `${((from - begin) / span) * 100}%`;
    bar.style.width = `${Math.max(((to - from) / span) * 100, 0.3)}%`;
    const label = `${s.key}${s.attempt > 1 || s.attempt_only ? ` (attempt ${s.attempt})` : ""}`;
    return h("div", { class: "step", "data-step": s.key },
      h("span", { class: "mono" }, label), h("div", { class: "track" }, bar),
      h("span", { class: s.error ? "error" : "muted" }, s.error ? "failed" : seconds(to - from)));
  }));
}

function waitsOf(events) {
  const met = events.filter((e) => e.type === "RUN_EVENT_TYPE_WAIT_MET" || e.type === "RUN_EVENT_TYPE_SIGNAL_RECEIVED");
  const suspended = events.filter((e) => e.type === "RUN_EVENT_TYPE_SUSPENDED");
  const rows = [...suspended.map((e) => ["waiting", e]), ...met.map((e) => ["met", e])]
    .sort((a, b) => Number(a[1].sequence) - Number(b[1].sequence));
  if (!rows.length) return h("p", { class: "muted" }, "No waits.");
  return h("table", {}, h("thead", {}, h("tr", {}, ["", "Time", "Key", "Detail"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map(([kind, e]) => h("tr", {},
      h("td", {}, kind), h("td", {}, when(e.time)), h("td", { class: "mono" }, e.key || e.name || ""),
      h("td", {}, shorten(e.detail || payloadText(e.payload), 200))))));
}

function historyTable(events) {
  return h("table", { id: "history" },
    h("thead", {}, h("tr", {}, ["#", "Time", "Event", "Key", "Attempt", "Detail"].map((t) => h("th", {}, t)))),
    h("tbody", {}, events.map((e) => h("tr", { "data-event": eventName(e.type) },
      h("td", {}, e.sequence || "0"), h("td", {}, when(e.time)), h("td", {}, eventName(e.type)),
      h("td", { class: "mono" }, e.key || e.name || ""), h("td", {}, e.attempt || ""),
      h("td", {}, e.error ? h("span", { class: "error" }, `${e.error.type}: ${shorten(e.error.message || "", 200)}`)
        : shorten(e.detail || payloadText(e.payload), 200))))));
}

function runActions(run, events, reload) {
  const status = statusName(run.status);
  const buttons = [];
  if (!TERMINAL.has(status) && may("cancel")) {
    buttons.push(h("button", { class: "danger", id: "cancel", onclick: () => {
      const reason = h("input", { id: "cancel-reason", placeholder: "why (optional)" });
      confirmAction(`Cancel run ${run.run_id}?`, [h("label", {}, "Reason", reason)], async () => {
        await rpc("CancelRun", { run_id: run.run_id, reason: reason.value });
        notice(`Run ${run.run_id} cancelled.`);
        await reload();
      });
    } }, "Cancel"));
  }
  if (!TERMINAL.has(status) && may("signal")) {
    buttons.push(h("button", { id: "signal", onclick: () => {
      const name = h("input", { id: "signal-name", placeholder: "signal name" });
      const data = h("textarea", { id: "signal-data" }, "{}");
      confirmAction(`Send a signal to ${run.run_id}`, [h("label", {}, "Name", name), h("label", {}, "Payload (JSON)", data)], async () => {
        try { JSON.parse(data.value); } catch (e) { throw new Error(`the payload is not JSON: ${e.message}`); }
        await rpc("Signal", { run_id: run.run_id, name: name.value, payload: { json: data.value }, request_id: randomId() });
        notice(`Signal ${name.value} sent.`);
        await reload();
      });
    } }, "Signal"));
  }
  if ((status === "FAILED" || status === "CANCELLED") && may("manage_runs")) {
    buttons.push(h("button", { class: "primary", id: "retry", onclick: () => {
      const reason = h("input", { id: "retry-reason", placeholder: "why (optional)" });
      confirmAction(`Retry run ${run.run_id}? Its recorded steps are kept; the failed step runs again.`,
        [h("label", {}, "Reason", reason)], async () => {
          await rpc("RetryRun", { run_id: run.run_id, reason: reason.value });
          notice(`Run ${run.run_id} goes on from where it stopped.`);
          await reload();
        });
    } }, "Retry"));
  }
  const steps = [...new Set(events.filter((e) => e.type === "RUN_EVENT_TYPE_STEP_COMPLETED" && !e.attempt_only).map((e) => e.key))];
  if (steps.length && may("manage_runs")) {
    buttons.push(h("button", { id: "fork", onclick: () => {
      const step = h("select", { id: "fork-step" }, steps.map((key) => h("option", { value: key }, key)));
      confirmAction(`Fork run ${run.run_id}`, [
        h("label", {}, "Keep the recorded steps up to and including", step),
        h("p", { class: "muted" }, "A new run of the same workflow and input starts with those steps recorded and runs the rest."),
      ], async () => {
        const answer = await rpc("ForkRun", { run_id: run.run_id, step_key: step.value, request_id: randomId() });
        location.hash = `#/runs/${encodeURIComponent(answer.run.run_id)}`;
      });
    } }, "Fork"));
  }
  return h("div", { class: "actions" }, buttons);
}

function pendingWaits(answer) {
  const waits = answer.pending_waits || [];
  const rows = waits.map((w) => h("tr", { "data-wait": w.wait_key },
    h("td", {}, (w.kind || "").replace(/^PENDING_WAIT_KIND_/, "").toLowerCase()),
    h("td", { class: "mono" }, w.name || w.wait_key),
    h("td", {}, w.fire_time ? `fires ${when(w.fire_time)}` : w.deadline ? `until ${when(w.deadline)}` : ""),
    h("td", { class: "mono" }, w.child_run_id ? h("a", { href: `#/runs/${encodeURIComponent(w.child_run_id)}` }, w.child_run_id)
      : w.hook_token ? shorten(w.hook_token, 40) : w.match_json || "")));
  const parts = [];
  if (answer.no_worker) parts.push(h("p", { class: "error", id: "no-worker" }, "No connected worker serves this workflow and version."));
  if (rows.length) {
    parts.push(h("table", { id: "pending-waits" }, h("thead", {}, h("tr", {}, ["Waiting for", "Name", "When", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)));
  }
  return parts;
}

async function runPage(runId) {
  const heading = h("h1", {}, "Run ", h("span", { class: "mono" }, runId));
  const body = h("div", {});
  show(heading, body);
  async function load() {
    const [answer, events, children] = await Promise.all([
      rpc("GetRun", { run_id: runId }),
      allEvents(runId),
      rpc("ListRuns", { parent_run_id: runId, page_size: 100 }),
    ]);
    const { run } = answer;
    const status = statusName(run.status);
    const took = run.end_time ? seconds(millis(run.end_time) - millis(run.create_time)) : "";
    const facts = h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { id: "run-status" }, badge(run.status),
        run.failure_reason ? h("span", { class: "muted" }, ` ${run.failure_reason.replace(/^FAILURE_REASON_/, "").toLowerCase()}`) : ""),
      h("dt", {}, "Workflow"), h("dd", {}, `${run.workflow_name} ${run.workflow_version || ""}`),
      h("dt", {}, "Created"), h("dd", {}, when(run.create_time)),
      h("dt", {}, "Ended"), h("dd", {}, run.end_time ? `${when(run.end_time)} (${took})` : "—"),
      h("dt", {}, "Dispatches"), h("dd", {}, run.dispatch_count || 0),
      run.progress ? [h("dt", {}, "Progress"), h("dd", { id: "run-progress", class: "mono" }, shorten(payloadText(run.progress).replace(/\s+/g, " "), 200))] : [],
      run.forked_from_run_id ? [h("dt", {}, "Forked from"), h("dd", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(run.forked_from_run_id)}` }, run.forked_from_run_id), ` at ${run.forked_from_step_key || ""}`)] : [],
      run.retry_count ? [h("dt", {}, "Retried"), h("dd", {}, `${run.retry_count} time(s)`)] : [],
      run.idempotency_key ? [h("dt", {}, "Idempotency key"), h("dd", { class: "mono" }, run.idempotency_key)] : [],
      run.schedule_id ? [h("dt", {}, "Schedule"), h("dd", {}, h("a", { href: `#/schedules/${encodeURIComponent(run.schedule_id)}` }, run.schedule_id))] : [],
      run.parent_run_id ? [h("dt", {}, "Parent"), h("dd", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(run.parent_run_id)}` }, run.parent_run_id))] : [],
      run.cancel_reason ? [h("dt", {}, "Cancel reason"), h("dd", {}, run.cancel_reason)] : [],
      run.deadline ? [h("dt", {}, "Deadline"), h("dd", {}, when(run.deadline))] : []);
    const outcome = run.error
      ? h("div", {}, h("p", { class: "error", id: "run-error" }, `${run.error.type}: ${run.error.message}`), run.error.traceback ? h("pre", {}, run.error.traceback) : "")
      : h("pre", { id: "run-result" }, TERMINAL.has(status) ? payloadText(run.result) : "—");
    const kids = children.runs || [];
    body.replaceChildren(
      runActions(run, events, load),
      ...pendingWaits(answer),
      h("div", { class: "row" },
        h("div", { class: "card" }, facts),
        h("div", { class: "card" }, h("h2", {}, "Input"), h("pre", { id: "run-input" }, payloadText(run.input)),
          h("h2", {}, run.error ? "Error" : "Result"), outcome)),
      h("h2", {}, "Timeline"), h("div", { class: "card" }, timeline(run, events)),
      h("h2", {}, "Waits"), waitsOf(events),
      h("h2", {}, `Children (${kids.length})`),
      kids.length ? h("table", {}, h("tbody", {}, kids.map(runRow))) : h("p", { class: "muted" }, "No children."),
      h("h2", {}, `History (${events.length})`), historyTable(events));
    if (TERMINAL.has(status)) stopRefresh();
  }
  await load();
  refreshEvery(RUN_REFRESH_MS, load);
}

// -- schedules -------------------------------------------------------------------

function scheduleActions(schedule, reload) {
  if (!may("manage_schedules")) return "";
  const act = (label, method, id) => h("button", { id: `${id}-${schedule.schedule_id}`, onclick: () =>
    confirmAction(`${label} schedule ${schedule.schedule_id}?`, [], async () => {
      await rpc(method, { schedule_id: schedule.schedule_id, ...(method === "TriggerSchedule" ? { request_id: randomId() } : {}) });
      notice(`${label}: ${schedule.schedule_id}`);
      await reload();
    }) }, label);
  return h("div", { class: "actions" },
    schedule.paused ? act("Resume", "ResumeSchedule", "resume") : act("Pause", "PauseSchedule", "pause"),
    act("Trigger now", "TriggerSchedule", "trigger"));
}

async function schedulesPage() {
  const body = h("tbody", { id: "schedules" });
  show(h("h1", {}, "Schedules"), h("table", {}, h("thead", {}, h("tr", {},
    ["Schedule", "Workflow", "Cron", "State", "Next", "Last", ""].map((t) => h("th", {}, t)))), body));
  async function load() {
    const answer = await rpc("ListSchedules", { page_size: 200 });
    const rows = (answer.schedules || []).map((s) => h("tr", { "data-schedule": s.schedule_id },
      h("td", { class: "mono" }, h("a", { href: `#/schedules/${encodeURIComponent(s.schedule_id)}` }, s.schedule_id)),
      h("td", {}, s.workflow_name), h("td", { class: "mono" }, `${s.spec.cron} ${s.spec.time_zone || "UTC"}`),
      h("td", {}, s.paused ? "paused" : "active"),
      h("td", {}, (s.next_occasion_times || []).slice(0, 3).map(when).join(", ")),
      h("td", {}, when(s.last_occasion_time)), h("td", {}, scheduleActions(s, load))));
    body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No schedules."))]));
  }
  await load();
}

async function schedulePage(scheduleId) {
  const body = h("div", {});
  show(h("h1", {}, "Schedule ", h("span", { class: "mono" }, scheduleId)), body);
  async function load() {
    const { schedule } = await rpc("GetSchedule", { schedule_id: scheduleId, recent_runs: 20 });
    body.replaceChildren(
      scheduleActions(schedule, load),
      h("div", { class: "card" }, h("dl", { class: "facts" },
        h("dt", {}, "Workflow"), h("dd", {}, schedule.workflow_name),
        h("dt", {}, "Cron"), h("dd", { class: "mono" }, `${schedule.spec.cron} (${schedule.spec.time_zone || "UTC"})`),
        h("dt", {}, "State"), h("dd", { id: "schedule-state" }, schedule.paused ? "paused" : "active"),
        h("dt", {}, "Next occasions"), h("dd", {}, (schedule.next_occasion_times || []).map(when).join(", ") || "—"))),
      h("h2", {}, "Recent runs"),
      h("table", {}, h("tbody", {}, (schedule.recent_runs || []).map((r) => h("tr", {},
        h("td", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.run_id)),
        h("td", {}, when(r.schedule_time)), h("td", {}, badge(r.status)))))));
  }
  await load();
}

// -- workers -------------------------------------------------------------------

async function workersPage() {
  const body = h("div", {});
  show(h("h1", {}, "Workers"), body);
  async function load() {
    let answer;
    try {
      answer = await rpc("ListWorkers", { page_size: 500 });
    } catch (e) {
      if (e.status === 404 || e.status === 501) {
        body.replaceChildren(h("p", { class: "muted" }, "This server does not list workers."));
        return;
      }
      throw e;
    }
    const workers = answer.workers || [];
    body.replaceChildren(h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ["Identity", "Workflows", "Capacity", "Runs held", "Last heard", "Server"].map((t) => h("th", {}, t)))),
      h("tbody", {}, workers.length ? workers.map((w) => h("tr", {},
        h("td", { class: "mono" }, w.identity || w.worker_id),
        h("td", {}, (w.workflows || []).map((f) => `${f.name}${f.version ? ` ${f.version}` : ""}`).join(", ")),
        h("td", {}, w.capacity || 0), h("td", {}, w.runs_held || 0),
        h("td", {}, when(w.last_heartbeat_time)), h("td", { class: "mono" }, w.replica_id || ""))) :
        [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No workers connected."))])));
  }
  await load();
  refreshEvery(LIST_REFRESH_MS * 2, load);
}

// -- routing -------------------------------------------------------------------

// One page is drawn at a time: a route asked for while one is drawn runs after
// it, so a slow page can neither overwrite a newer one nor leave its refresh on.
let routing = false;
let routeAgain = false;
async function route() {
  if (routing) { routeAgain = true; return; }
  routing = true;
  try {
    do { routeAgain = false; await drawPage(); } while (routeAgain);
  } finally {
    routing = false;
  }
}

async function drawPage() {
  stopRefresh();
  notice("");
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/runs";
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === parts[0]);
  }
  if (me === null && !(await loadMe())) { signInPage(); return; }
  try {
    if (parts[0] === "runs" && parts[1]) await runPage(parts[1]);
    else if (parts[0] === "schedules" && parts[1]) await schedulePage(parts[1]);
    else if (parts[0] === "schedules") await schedulesPage();
    else if (parts[0] === "workers") await workersPage();
    else await runsPage();
  } catch (e) {
    if (e.status === 401) { me = null; signInPage(); return; }
    show(h("p", { class: "error", id: "page-error" }, e.message));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
