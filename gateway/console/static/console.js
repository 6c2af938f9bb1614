// The llmaas console: one page, no build step. It keeps the token in sessionStorage (this tab
// only), sends it as a Bearer to /console/api/*, and redraws the graphs and alerts every few
// seconds. Every value from the server is put in the page as text (never as HTML).
"use strict";

const TOKEN_KEY = "llmaas.console.token";
const POLL_MS = 5000;
const USAGE_EVERY = 6; // polls: the ledger totals move slowly and cost a store query
let polls = 0;
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];
const $ = (sel) => document.querySelector(sel);
const charts = {};
let pollTimer = null;
let viewer = null;

class Unauthorized extends Error {}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Unauthorized((body.error && body.error.message) || "unauthorized");
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

// -- formatting ---------------------------------------------------------------------------------
const fmtInt = (n) => (n == null ? "" : Number(n).toLocaleString("en-US"));
const fmtEur = (n) => (n == null ? "" : Number(n).toFixed(n < 1 ? 6 : 2));
const fmtNum = (n) => (n == null ? "" : Number(n) < 10 ? Number(n).toFixed(3) : Number(n).toFixed(1));
const fmtTime = (t) => (t == null ? "" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z");
const labelsText = (labels) => Object.entries(labels || {}).map(([k, v]) => k + "=" + v).join(", ");

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(emptyText);
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    tbody.append(tr);
  }
}

// -- sections -----------------------------------------------------------------------------------
async function loadUsage() {
  const period = $("#usage-period").value;
  const body = await api("/console/api/usage?since=" + encodeURIComponent(period));
  const rows = body.models.map((m) => [cell(m.key), cell(fmtInt(m.requests), "num"), cell(fmtInt(m.input_tokens), "num"),
    cell(fmtInt(m.cached_input_tokens), "num"), cell(fmtInt(m.output_tokens), "num"),
    cell(fmtInt(m.reasoning_tokens), "num"), cell(fmtEur(m.cost_eur), "num")]);
  fill($("#usage-table tbody"), rows, "No requests in this period.", 7);
  const total = (k) => body.models.reduce((s, m) => s + m[k], 0);
  const foot = $("#usage-table tfoot");
  foot.replaceChildren();
  if (body.models.length > 1) {
    const tr = document.createElement("tr");
    tr.append(cell("total"), cell(fmtInt(total("requests")), "num"), cell(fmtInt(total("input_tokens")), "num"),
      cell(fmtInt(total("cached_input_tokens")), "num"), cell(fmtInt(total("output_tokens")), "num"),
      cell(fmtInt(total("reasoning_tokens")), "num"), cell(fmtEur(total("cost_eur")), "num"));
    foot.append(tr);
  }
  $("#usage-table").dataset.loaded = "1";
}

function drawChart(id, times, seriesDefs) {
  // seriesDefs: [{label, values, color, dash}]; rebuilt when the set of lines changes.
  const el = $("#" + id);
  const signature = seriesDefs.map((s) => s.label).join("|");
  const data = [times, ...seriesDefs.map((s) => s.values)];
  const existing = charts[id];
  if (existing && existing.signature === signature) {
    existing.plot.setData(data);
    return;
  }
  if (existing) existing.plot.destroy();
  const opts = {
    width: Math.max(320, el.clientWidth || 560),
    height: 240,
    scales: { x: { time: true } },
    series: [{}, ...seriesDefs.map((s) => ({ label: s.label, stroke: s.color, dash: s.dash, width: 2, spanGaps: false }))],
    axes: [{}, { size: 60 }],
  };
  charts[id] = { signature, plot: new uPlot(opts, data, el) };
}

async function loadSeries() {
  const minutes = $("#series-minutes").value;
  const body = await api("/console/api/series?minutes=" + encodeURIComponent(minutes));
  const models = Object.keys(body.models);
  const color = (i) => COLORS[i % COLORS.length];
  const quantiles = (p50, p99) => models.flatMap((m, i) => [
    { label: m + " p50", values: body.models[m][p50], color: color(i) },
    { label: m + " p99", values: body.models[m][p99], color: color(i), dash: [6, 4] },
  ]);
  drawChart("chart-ttft", body.times, quantiles("ttft_p50_ms", "ttft_p99_ms"));
  drawChart("chart-e2e", body.times, quantiles("e2e_p50_ms", "e2e_p99_ms"));
  drawChart("chart-throughput", body.times,
    models.map((m, i) => ({ label: m, values: body.models[m].output_tokens_per_s, color: color(i) })));
  drawChart("chart-requests", body.times,
    models.map((m, i) => ({ label: m, values: body.models[m].requests, color: color(i) })));
  const total = models.reduce((s, m) => s + body.models[m].requests.reduce((a, b) => a + b, 0), 0);
  $("#live").textContent = "live: " + total + " requests in the window, updated " + new Date().toLocaleTimeString();
  document.querySelector(".charts").dataset.models = models.join(",");
}

async function loadAlerts() {
  const body = await api("/console/api/alerts");
  fill($("#alerts-active tbody"), body.active.map((e) => [cell(e.rule), cell(e.severity, "sev-" + e.severity),
    cell(labelsText(e.labels)), cell(fmtNum(e.value), "num"), cell(fmtNum(e.threshold), "num"), cell(fmtTime(e.since))]),
  "Nothing is firing.", 6);
  fill($("#alerts-history tbody"), body.history.slice(0, 50).map((e) => [cell(fmtTime(e.time)),
    cell(e.state, "state-" + e.state), cell(e.rule), cell(labelsText(e.labels)), cell(fmtNum(e.value), "num")]),
  "No alert has fired yet.", 5);
  $("#alerts-active").dataset.count = String(body.active.length);
}

let historyQuery = null; // the filters of the rows shown, and the cursor of the next (older) page
let historyNext = null;

async function loadHistory(older = false) {
  const query = new URLSearchParams();
  if (older) {
    for (const [k, v] of historyQuery.entries()) query.set(k, v);
    query.set("before", historyNext);
  } else {
    const form = new FormData($("#history-form"));
    for (const [k, v] of form.entries()) if (String(v).trim() !== "") query.set(k, String(v).trim());
    historyQuery = new URLSearchParams(query);
  }
  $("#history-error").textContent = "";
  let body;
  try {
    body = await api("/console/api/history?" + query.toString());
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    $("#history-error").textContent = err.message;
    return;
  }
  const admin = viewer && viewer.role === "admin";
  const rows = body.data.map((r) => [cell(fmtTime(r.time)), cell(r.request_id),
    cell(r.tenant, "admin-only"), cell(r.model), cell(r.status, r.status >= 400 ? "status-error" : ""), cell(r.reason),
    cell(fmtInt(r.input_tokens), "num"), cell(fmtInt(r.output_tokens), "num"), cell(fmtInt(r.reasoning_tokens), "num"),
    cell(fmtEur(r.cost_eur), "num"), cell(r.latency_ms == null ? "" : r.latency_ms.toFixed(1), "num"), cell(r.verdict)]);
  const tbody = $("#history-table tbody");
  if (older) {
    for (const cells of rows) {
      const tr = document.createElement("tr");
      tr.append(...cells);
      tbody.append(tr);
    }
  } else {
    fill(tbody, rows, "No request matches.", admin ? 12 : 11);
  }
  historyNext = body.next || null;
  $("#history-more").hidden = historyNext === null;
  $("#history-table").dataset.rows = String(tbody.querySelectorAll("tr:not(.empty)").length);
}

async function loadModels() {
  const body = await api("/console/api/models");
  fill($("#models-table tbody"), body.data.map((m) => [cell(m.id), cell(m.publisher), cell(m.phase, "phase-" + m.phase),
    cell(m.go_live), cell(m.end_of_support || "—"), cell(m.replacement), cell(m.served == null ? "" : m.served ? "yes" : "no")]),
  "No model.", 7);
  $("#models-table").dataset.loaded = "1";
}

// -- session ------------------------------------------------------------------------------------
function guard(promise) {
  return promise.catch((err) => {
    if (err instanceof Unauthorized) logout(err.message);
    else console.error(err);
  });
}

function poll() {
  polls += 1;
  const loads = [loadSeries(), loadAlerts()];
  if (polls % USAGE_EVERY === 0) loads.push(loadUsage());
  guard(Promise.all(loads));
}

async function start() {
  try {
    viewer = await api("/console/api/me");
  } catch (err) {
    logout(err.message);
    return;
  }
  document.body.classList.toggle("tenant", viewer.role !== "admin");
  $("#who").textContent = viewer.role === "admin" ? "admin (all tenants)" : "tenant " + viewer.tenant;
  $("#tenant-filter").hidden = viewer.role !== "admin";
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  await guard(Promise.all([loadUsage(), loadSeries(), loadAlerts(), loadHistory(), loadModels()]));
  clearInterval(pollTimer);
  pollTimer = setInterval(poll, POLL_MS);
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(pollTimer);
  viewer = null;
  // The next viewer starts clean: no filters, rows or graphs of the previous one.
  $("#history-form").reset();
  $("#history-more").hidden = true;
  historyQuery = historyNext = null;
  for (const sel of ["#usage-table tbody", "#usage-table tfoot", "#history-table tbody", "#alerts-active tbody",
    "#alerts-history tbody", "#models-table tbody"]) $(sel).replaceChildren();
  for (const id of Object.keys(charts)) {
    charts[id].plot.destroy();
    delete charts[id];
  }
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#who").textContent = "";
  $("#login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("#token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#token").value = "";
    $("#login-error").textContent = "";
    start();
  });
  $("#logout").addEventListener("click", () => logout(""));
  $("#usage-period").addEventListener("change", () => guard(loadUsage()));
  $("#series-minutes").addEventListener("change", () => guard(loadSeries()));
  $("#history-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guard(loadHistory());
  });
  $("#history-more").addEventListener("click", () => guard(loadHistory(true)));
  window.addEventListener("resize", () => {
    for (const id of Object.keys(charts)) {
      const el = $("#" + id);
      charts[id].plot.setSize({ width: Math.max(320, el.clientWidth), height: 240 });
    }
  });
  if (sessionStorage.getItem(TOKEN_KEY)) start();
});
