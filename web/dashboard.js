// The admin dashboard: keys, usage and live traffic, from the admin API.
// The admin key lives in sessionStorage and travels only as a Bearer header.
// Everything from the store is put on the page as text (textContent), never
// as markup. Charts are SVG drawn here.
"use strict";

const KEY_SLOT = "ai-gateway-admin-key";
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#5b9cff", "#3ecf8e", "#f5b942", "#ff6b6b", "#b48cff", "#4dd4e6", "#ff9f5a", "#9aa3b2"];
const $ = (id) => document.getElementById(id);

// ---- the admin API -------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY_SLOT);
  const init = { method, headers: { Authorization: `Bearer ${key}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    if (r.status === 401 || r.status === 403) signOut("Your admin key was refused: " + (data?.error?.message ?? r.status));
    throw new ApiError(r.status, data?.error?.message ?? `HTTP ${r.status}`);
  }
  return data;
}

// ---- small DOM helpers ---------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const fmt = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const day = (t) => (t ? String(t).slice(0, 10) : "never");

// ---- sign in, views ------------------------------------------------------------------
function signOut(message) {
  sessionStorage.removeItem(KEY_SLOT);
  stopLive();
  $("nav").classList.add("hidden");
  for (const v of ["keys", "usage", "live"]) $(`view-${v}`).classList.add("hidden");
  $("signin").classList.remove("hidden");
  $("signin-error").textContent = message ?? "";
}

async function signIn(key) {
  sessionStorage.setItem(KEY_SLOT, key);
  try {
    await api("GET", "/admin/v1/keys");
  } catch (e) {
    if (e.status !== 401 && e.status !== 403) signOut(e.message);
    return;
  }
  $("signin").classList.add("hidden");
  $("nav").classList.remove("hidden");
  show();
}

function show() {
  const view = (location.hash || "#keys").slice(1);
  const name = ["keys", "usage", "live"].includes(view) ? view : "keys";
  for (const v of ["keys", "usage", "live"]) $(`view-${v}`).classList.toggle("hidden", v !== name);
  for (const a of document.querySelectorAll("#nav a[data-view]")) a.classList.toggle("active", a.dataset.view === name);
  stopLive();
  if (name === "keys") loadKeys();
  if (name === "usage") loadUsage();
  if (name === "live") startLive();
}

// ---- keys ------------------------------------------------------------------------------
const LIMITS = [
  ["rpm", "rpm"],
  ["tpm", "tpm"],
  ["max_concurrent", "in flight"],
  ["daily_tokens", "tokens/day"],
  ["monthly_tokens", "tokens/month"],
];

function limitsText(l) {
  const parts = LIMITS.filter(([k]) => l?.[k] != null).map(([k, label]) => `${label} ${fmt(l[k])}`);
  return parts.length ? parts.join(", ") : "unlimited";
}

function grantsText(k) {
  const g = [k.load_options && "load settings", k.web_search && "web search", k.trace_contents && "contents traced"].filter(Boolean);
  return g.length ? g.join(", ") : "none";
}

async function loadKeys() {
  const list = await api("GET", "/admin/v1/keys");
  const body = $("keys-table").tBodies[0];
  body.replaceChildren(
    ...list.data.map((k) =>
      el(
        "tr",
        { "data-key": k.id },
        el("td", {}, k.name),
        el("td", {}, el("code", {}, k.id)),
        el("td", {}, el("code", {}, k.prefix)),
        el("td", {}, k.role),
        el("td", {}, k.models === "all" ? "all" : k.models.join(", ")),
        el("td", {}, limitsText(k.limits)),
        el("td", {}, k.priority ?? "standard"),
        el("td", {}, grantsText(k)),
        el("td", {}, day(k.created)),
        el("td", {}, day(k.expires)),
        el("td", {}, k.last_used ?? "never"),
        el("td", {}, el("span", { class: `pill ${k.status}` }, k.status)),
        el(
          "td",
          {},
          k.status === "revoked"
            ? ""
            : el(
                "span",
                { class: "actions" },
                el("button", { type: "button", onclick: () => editKey(k) }, "Edit"),
                " ",
                el("button", { type: "button", onclick: () => rotateKey(k) }, "Rotate"),
                " ",
                el("button", { type: "button", class: "danger", onclick: () => revokeKey(k) }, "Revoke"),
              ),
        ),
      ),
    ),
  );
}

// Form fields → the admin API's settings (empty number fields are "no limit").
function settingsFrom(form, creating) {
  const f = new FormData(form);
  const out = {};
  if (creating) {
    out.name = f.get("name").trim();
    out.role = f.get("role");
  }
  // "All models" is a choice of its own: an emptied list is sent as it is,
  // and the API refuses it, rather than quietly opening every model.
  out.models = f.get("all_models") ? "all" : f.get("models").split(",").map((m) => m.trim()).filter(Boolean);
  for (const [k] of LIMITS) {
    const v = f.get(k).trim();
    out[k] = v === "" ? null : Number(v);
  }
  out.priority = f.get("priority");
  out.load_options = f.get("load_options") === "on";
  out.web_search = f.get("web_search") === "on";
  out.trace_contents = f.get("trace_contents") === "on";
  const expires = f.get("expires").trim();
  if (expires !== "" || !creating) out.expires = expires === "" ? null : expires;
  return out;
}

function showSecret(secret) {
  $("secret-value").textContent = secret;
  $("secret-box").classList.remove("hidden");
}

async function createKey(e) {
  e.preventDefault();
  $("create-error").textContent = "";
  try {
    const created = await api("POST", "/admin/v1/keys", settingsFrom(e.target, true));
    e.target.reset();
    showSecret(created.secret);
    await loadKeys();
  } catch (err) {
    $("create-error").textContent = err.message;
  }
}

function editKey(k) {
  const form = $("edit-form");
  $("edit-name").textContent = k.name;
  $("edit-error").textContent = "";
  const all = k.models === "all";
  form.elements.all_models.checked = all;
  form.elements.models.value = all ? "" : k.models.join(", ");
  form.elements.models.disabled = all;
  for (const [f] of LIMITS) form.elements[f].value = k.limits?.[f] ?? "";
  form.elements.priority.value = k.priority ?? "standard";
  form.elements.load_options.checked = !!k.load_options;
  form.elements.web_search.checked = !!k.web_search;
  form.elements.trace_contents.checked = !!k.trace_contents;
  form.elements.expires.value = k.expires ? day(k.expires) : "";
  form.dataset.key = k.id;
  $("edit-dialog").showModal();
}

async function saveEdit(e) {
  if (e.submitter?.value !== "save") return;
  e.preventDefault();
  try {
    await api("PATCH", `/admin/v1/keys/${encodeURIComponent(e.target.dataset.key)}`, settingsFrom(e.target, false));
    $("edit-dialog").close();
    await loadKeys();
  } catch (err) {
    $("edit-error").textContent = err.message;
  }
}

async function rotateKey(k) {
  if (!confirm(`Rotate the secret of '${k.name}'? The old secret stops working at once.`)) return;
  const rotated = await api("POST", `/admin/v1/keys/${encodeURIComponent(k.id)}/rotate`);
  showSecret(rotated.secret);
  await loadKeys();
}

async function revokeKey(k) {
  if (!confirm(`Revoke '${k.name}'? Requests with it are refused from now on.`)) return;
  await api("DELETE", `/admin/v1/keys/${encodeURIComponent(k.id)}`);
  await loadKeys();
}

// ---- usage -----------------------------------------------------------------------------
let shown = { perKey: [], perDay: [], perApi: [], perSession: [] };

// Sessions shown (the busiest); the CSV export holds the same.
const SESSIONS_SHOWN = 100;

function usageQuery(by) {
  const f = new FormData($("usage-form"));
  const q = new URLSearchParams({ by });
  // Sessions are not kept by model.
  for (const k of by === "session" ? ["from", "to", "key"] : ["from", "to", "key", "model"]) {
    const v = (f.get(k) ?? "").trim();
    if (v) q.set(k, v);
  }
  return `/admin/v1/usage?${q}`;
}

async function loadUsage() {
  const keys = await api("GET", "/admin/v1/keys");
  const select = $("usage-form").elements.key;
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all keys"), ...keys.data.map((k) => el("option", { value: k.id }, k.name)));
  select.value = chosen;
  const [byDayModel, byDay, byKey, byApi, bySession] = await Promise.all([
    api("GET", usageQuery("day_model")),
    api("GET", usageQuery("day")),
    api("GET", usageQuery("key")),
    api("GET", usageQuery("api")),
    api("GET", usageQuery("session")),
  ]);
  const sessions = bySession.data.slice(0, SESSIONS_SHOWN);
  shown = { perKey: byKey.data, perDay: byDay.data, perApi: byApi.data, perSession: sessions };
  drawStacked($("tokens-chart"), $("tokens-legend"), byDayModel.data);
  drawRequests($("requests-chart"), byDay.data);
  const row = (name, r) =>
    el(
      "tr",
      {},
      el("td", {}, name),
      el("td", { class: "num" }, fmt(r.requests)),
      el("td", { class: "num" }, fmt(r.errors)),
      el("td", { class: "num" }, fmt(r.prompt_tokens)),
      el("td", { class: "num" }, fmt(r.completion_tokens)),
      el("td", { class: "num" }, fmt(r.total_tokens)),
    );
  $("usage-table").tBodies[0].replaceChildren(...byKey.data.map((r) => row(r.key, r)));
  $("usage-api-table").tBodies[0].replaceChildren(...byApi.data.map((r) => row(r.api, r)));
  $("usage-session-table").tBodies[0].replaceChildren(
    ...sessions.map((r) =>
      el(
        "tr",
        {},
        el("td", {}, r.session),
        el("td", {}, r.key),
        el("td", { class: "num" }, fmt(r.requests)),
        el("td", { class: "num" }, fmt(r.errors)),
        el("td", { class: "num" }, fmt(r.total_tokens)),
        el("td", { class: "num" }, (r.latency_ms_sum / 1000).toFixed(1)),
      ),
    ),
  );
}

function csvCell(v) {
  const s = String(v ?? "");
  return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

function exportCsv() {
  const rows = [["section", "key_or_day", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"]];
  for (const r of shown.perKey) rows.push(["key", r.key, r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.total_tokens]);
  for (const r of shown.perDay) rows.push(["day", r.day, r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.total_tokens]);
  for (const r of shown.perApi ?? []) rows.push(["protocol", r.api, r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.total_tokens]);
  for (const r of shown.perSession ?? []) rows.push(["session", `${r.session} (${r.key})`, r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.total_tokens]);
  const blob = new Blob([rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "ai-gateway-usage.csv" });
  document.body.append(a);
  a.click();
  a.remove();
}

// ---- charts ----------------------------------------------------------------------------
const W = 900;
const H = 240;
const PAD = { l: 60, r: 60, t: 12, b: 28 };

// A round axis top for counts: 1, 2 or 5 × 10^k per tick, four ticks.
function niceMax(max) {
  const raw = Math.max(max, 1) / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return Math.max(step, 1) * 4;
}

function frame(node, rawMax, labels, rightRawMax) {
  const max = niceMax(rawMax);
  const rightMax = rightRawMax == null ? null : niceMax(rightRawMax);
  node.replaceChildren();
  node.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const y = (v) => H - PAD.b - (v / (max || 1)) * (H - PAD.t - PAD.b);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    node.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), stroke: "#2a2f3a" }));
    node.append(svg("text", { x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(Math.round(v))));
    if (rightMax != null) {
      node.append(svg("text", { x: W - PAD.r + 6, y: y(v) + 4 }, fmt(Math.round((rightMax * i) / 4))));
    }
  }
  const step = labels.length > 12 ? Math.ceil(labels.length / 12) : 1;
  const x = (i) => PAD.l + ((i + 0.5) * (W - PAD.l - PAD.r)) / Math.max(labels.length, 1);
  labels.forEach((l, i) => {
    if (i % step === 0) node.append(svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, l));
  });
  return { x, y, max, rightMax, band: (W - PAD.l - PAD.r) / Math.max(labels.length, 1) };
}

function drawStacked(node, legend, rows) {
  const days = [...new Set(rows.map((r) => r.day))].sort();
  const models = [...new Set(rows.map((r) => r.model))].sort();
  const totals = days.map((d) => rows.filter((r) => r.day === d).reduce((s, r) => s + r.total_tokens, 0));
  const g = frame(node, Math.max(...totals, 1), days.map((d) => d.slice(5)));
  days.forEach((d, i) => {
    let base = 0;
    models.forEach((m, j) => {
      const r = rows.find((r) => r.day === d && r.model === m);
      if (!r || !r.total_tokens) return;
      const top = base + r.total_tokens;
      const rect = svg("rect", {
        x: g.x(i) - g.band * 0.35,
        width: g.band * 0.7,
        y: g.y(top),
        height: Math.max(g.y(base) - g.y(top), 0.5),
        fill: PALETTE[j % PALETTE.length],
      });
      rect.append(svg("title", {}, `${d} ${m}: ${fmt(r.total_tokens)} tokens`));
      node.append(rect);
      base = top;
    });
  });
  if (!days.length) node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no usage in this range"));
  legend.replaceChildren(
    ...models.map((m, j) => el("span", {}, el("i", { class: `c${j % PALETTE.length}` }), m)),
  );
}

function drawRequests(node, rows) {
  const days = rows.map((r) => r.day);
  const g = frame(node, Math.max(...rows.map((r) => r.requests), 1), days.map((d) => d.slice(5)));
  rows.forEach((r, i) => {
    const bar = (v, color, shift) =>
      svg("rect", {
        x: g.x(i) - g.band * 0.35 + shift * g.band * 0.35,
        width: g.band * 0.35,
        y: g.y(v),
        height: Math.max(g.y(0) - g.y(v), 0.5),
        fill: color,
      });
    const req = bar(r.requests, PALETTE[0], 0);
    req.append(svg("title", {}, `${r.day}: ${fmt(r.requests)} requests`));
    const err = bar(r.errors, PALETTE[3], 1);
    err.append(svg("title", {}, `${r.day}: ${fmt(r.errors)} errors`));
    node.append(req, err);
  });
  if (!rows.length) node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no usage in this range"));
}

function drawLive(node, samples) {
  // Rates between successive samples (counters are cumulative).
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000 || 1;
    points.push({
      t: samples[i].t,
      rps: Math.max(samples[i].requests - samples[i - 1].requests, 0) / dt,
      tps: Math.max(samples[i].tokens - samples[i - 1].tokens, 0) / dt,
    });
  }
  const maxR = Math.max(...points.map((p) => p.rps), 1);
  const maxT = Math.max(...points.map((p) => p.tps), 1);
  const labels = points.map((p) => new Date(p.t).toISOString().slice(14, 19));
  const g = frame(node, maxR, labels, maxT);
  // Tokens/s is drawn against the right axis: scaled onto the left one.
  const line = (key, scale, color) => {
    const d = points.map((p, i) => `${i ? "L" : "M"}${g.x(i)},${g.y(p[key] * scale)}`).join("");
    if (d) node.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
  };
  line("rps", 1, PALETTE[0]);
  line("tps", g.max / g.rightMax, PALETTE[1]);
  return points;
}

// ---- live --------------------------------------------------------------------------------
let liveTimer = null;

function stopLive() {
  if (liveTimer) clearInterval(liveTimer);
  liveTimer = null;
}

async function refreshLive() {
  const live = await api("GET", "/admin/v1/live");
  $("live-inflight").textContent = fmt(live.in_flight);
  $("live-queue").textContent = fmt(live.upstream.queued);
  const points = drawLive($("live-chart"), live.samples);
  const recent = points.slice(-5);
  const avg = (k) => (recent.length ? recent.reduce((s, p) => s + p[k], 0) / recent.length : 0);
  $("live-rps").textContent = avg("rps").toFixed(1);
  $("live-tps").textContent = avg("tps").toFixed(1);
  $("hosts-table").tBodies[0].replaceChildren(
    ...live.hosts.map((h) =>
      el(
        "tr",
        {},
        el("td", {}, h.url),
        el("td", {}, el("span", { class: `pill ${h.healthy ? "healthy" : "down"}` }, h.healthy ? "healthy" : "down")),
        el("td", {}, h.version || "–"),
        el("td", { class: "num" }, fmt(h.in_flight)),
        el("td", { class: "num" }, fmt(h.queued)),
        el("td", { class: "num" }, h.models == null ? "–" : fmt(h.models)),
        el("td", {}, h.last_error ?? ""),
      ),
    ),
  );
  // Each host's queue: its loaded models, slots and waiting requests by lane.
  const lanes = (v) => `${fmt(v?.interactive ?? 0)} / ${fmt(v?.standard ?? 0)} / ${fmt(v?.batch ?? 0)}`;
  $("schedule-table").tBodies[0].replaceChildren(
    ...live.hosts.map((h) => {
      const s = h.schedule ?? {};
      const models = (s.resident ?? [])
        .map((m) => `${m.name}${m.loading ? " (loading)" : ""}${m.swap ? ` (${m.swap})` : ""} ×${m.in_flight}`)
        .join(", ");
      const waiting = (s.queued_by_model ?? []).map((q) => `${q.model}: ${lanes(q.queued)}`).join("; ");
      return el(
        "tr",
        {},
        el("td", {}, h.url),
        el("td", {}, s.known ? models || "none" : "not known"),
        el("td", {}, `${lanes(s.slots?.in_flight)} of ${fmt(s.slots?.max ?? 0)} (${fmt(s.slots?.reserved_interactive ?? 0)} kept for interactive)`),
        el("td", {}, lanes(s.queued)),
        el("td", {}, waiting),
        el("td", { class: "num" }, fmt(s.loads ?? 0)),
        el("td", { class: "num" }, fmt(s.loads_forced ?? 0)),
        el("td", { class: "num" }, fmt(s.loads_avoided ?? 0)),
        el("td", { class: "num" }, `${(h.load_seconds ?? 0).toFixed(1)} s`),
        el("td", { class: "num prompt-work" }, `${fmt(h.prompt_tokens?.evaluated ?? 0)} / ${fmt(h.prompt_tokens?.cached ?? 0)}`),
      );
    }),
  );
  // In a cluster (--redis): every instance alive, from the heartbeats in Redis.
  $("instances").classList.toggle("hidden", !live.instances);
  $("instances-table").tBodies[0].replaceChildren(
    ...(live.instances || []).map((i) =>
      el(
        "tr",
        {},
        el("td", {}, i.id),
        el("td", {}, i.store),
        el("td", {}, i.listen),
        el("td", { class: "num" }, fmt(i.in_flight)),
        el("td", { class: "num" }, fmt(i.requests)),
        el("td", {}, new Date(i.seen_ms).toLocaleTimeString()),
      ),
    ),
  );
  $("live-updated").textContent = `Updated ${new Date().toLocaleTimeString()}; refreshed every 2 s.`;
}

function startLive() {
  refreshLive().catch(() => {});
  liveTimer = setInterval(() => refreshLive().catch(() => {}), 2000);
}

// ---- wiring ------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("signin-key").value.trim();
    $("signin-key").value = "";
    signIn(key);
  });
  $("sign-out").addEventListener("click", (e) => {
    e.preventDefault();
    signOut();
  });
  $("create-form").addEventListener("submit", createKey);
  $("edit-form").addEventListener("submit", saveEdit);
  // The model list is typed only when "All models" is off.
  for (const form of [$("create-form"), $("edit-form")]) {
    form.elements.all_models.addEventListener("change", (e) => {
      form.elements.models.disabled = e.target.checked;
      if (!e.target.checked) form.elements.models.focus();
    });
  }
  $("secret-copy").addEventListener("click", () => navigator.clipboard?.writeText($("secret-value").textContent));
  $("secret-done").addEventListener("click", () => {
    $("secret-value").textContent = "";
    $("secret-box").classList.add("hidden");
  });
  $("usage-form").addEventListener("submit", (e) => {
    e.preventDefault();
    loadUsage();
  });
  $("csv").addEventListener("click", exportCsv);
  window.addEventListener("hashchange", () => {
    if (sessionStorage.getItem(KEY_SLOT)) show();
  });
  const key = sessionStorage.getItem(KEY_SLOT);
  if (key) signIn(key);
});
