// edgekit operator page: one EventSource (/api/stream) pushes the whole state; no reload, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
let lastRejectsKey = "";
let lastHistKey = "";
let pending = null;

function badge(el, cls, text) {
  el.className = "badge " + cls;
  if (text !== undefined) el.textContent = text;
}

function kindClass(d) { return d.failsafe ? "failsafe" : d.kind; }

function renderStrip(s) {
  const strip = $("strip");
  const frag = document.createDocumentFragment();
  for (const d of s.recent) {
    const c = document.createElement("span");
    c.className = "chip " + kindClass(d);
    c.dataset.part = d.part_id;
    c.dataset.kind = d.kind;
    if (d.failsafe) c.dataset.failsafe = d.failsafe;
    c.textContent = d.part_id;
    c.title = `part ${d.part_id}: ${d.kind}${d.failsafe ? " (fail-safe: " + d.failsafe + ")" : ""}, score ${fmt(d.score, 4)}`;
    frag.appendChild(c);
  }
  strip.replaceChildren(frag);

  // score against the band, newest at the right
  const svg = $("strip-chart");
  const W = 600, H = 120, pad = 6;
  const scores = s.recent.map((d) => d.score).filter((v) => v !== null && v !== undefined);
  const a = s.band.accept_edge, r = s.band.reject_edge;
  const pool = scores.concat([a, r].filter((v) => v !== null && v !== undefined));
  let lo = Math.min(...pool), hi = Math.max(...pool);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const span = hi - lo; lo -= span * 0.08; hi += span * 0.08;
  const y = (v) => H - pad - (v - lo) / (hi - lo) * (H - 2 * pad);
  const n = Math.max(s.recent.length, 1);
  const x = (i) => pad + (i + 0.5) * (W - 2 * pad) / n;
  let out = "";
  if (a !== null && r !== null && a !== undefined && r !== undefined) {
    out += `<rect x="0" y="${y(r)}" width="${W}" height="${Math.max(0, y(a) - y(r))}" fill="#d4a72c" opacity="0.15"/>`;
    out += `<line x1="0" x2="${W}" y1="${y(a)}" y2="${y(a)}" stroke="#2ea043" stroke-width="1.5"/>`;
    out += `<line x1="0" x2="${W}" y1="${y(r)}" y2="${y(r)}" stroke="#e5534b" stroke-width="1.5"/>`;
  }
  const color = { accept: "#2ea043", reject: "#e5534b", review: "#d4a72c", failsafe: "#a371f7" };
  s.recent.forEach((d, i) => {
    const v = (d.score === null || d.score === undefined) ? hi : d.score;
    out += `<circle cx="${x(i)}" cy="${y(v)}" r="4" fill="${color[kindClass(d)]}"><title>part ${d.part_id}: ${esc(d.kind)} ${fmt(d.score, 4)}</title></circle>`;
  });
  svg.innerHTML = out;
}

function renderHistogram(s) {
  const key = JSON.stringify([s.histogram, s.band]);
  if (key === lastHistKey) return;  // redraw only what changed: the browser shares the station's CPU
  lastHistKey = key;
  const cv = $("histogram");
  const ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height, padL = 34, padB = 20, padT = 8;
  ctx.clearRect(0, 0, W, H);
  const h = s.histogram;
  $("hist-n").textContent = h.n ? `${h.n} scores` : "no scores yet";
  if (!h.counts.length) return;
  const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
  const max = Math.max(...h.counts, 1);
  const X = (v) => padL + (v - lo) / (hi - lo) * (W - padL - 4);
  const a = s.band.accept_edge, r = s.band.reject_edge;
  h.counts.forEach((c, i) => {
    const x0 = X(h.edges[i]), x1 = X(h.edges[i + 1]);
    const mid = (h.edges[i] + h.edges[i + 1]) / 2;
    ctx.fillStyle = (r !== null && mid >= r) ? "#e5534b" : (a !== null && mid >= a) ? "#d4a72c" : "#2ea043";
    const bh = c / max * (H - padB - padT);
    ctx.fillRect(x0 + 0.5, H - padB - bh, Math.max(1, x1 - x0 - 1), bh);
  });
  ctx.lineWidth = 2;
  for (const [v, col] of [[a, "#2ea043"], [r, "#e5534b"]]) {
    if (v === null || v === undefined) continue;
    ctx.strokeStyle = col; ctx.beginPath(); ctx.moveTo(X(v), padT); ctx.lineTo(X(v), H - padB); ctx.stroke();
  }
  ctx.fillStyle = "#8b98a5"; ctx.font = "11px sans-serif";
  ctx.fillText(fmt(lo, 3), padL, H - 5);
  ctx.fillText(fmt(hi, 3), W - 40, H - 5);
  ctx.fillText(String(max), 2, padT + 10);
}

function renderRejects(s) {
  const box = $("rejects");
  const key = s.rejects.map((r) => r.name + (r.heat || "")).join("|");
  if (key === lastRejectsKey) return;
  lastRejectsKey = key;
  if (!s.rejects.length) {
    box.innerHTML = '<p class="empty">no archived rejects yet</p>';
    return;
  }
  const frag = document.createDocumentFragment();
  for (const r of s.rejects) {
    const f = document.createElement("figure");
    f.dataset.part = r.part_id;
    f.dataset.image = "/archive/" + encodeURIComponent(r.name);
    if (r.heat) f.dataset.heat = "/archive/" + encodeURIComponent(r.heat);
    const img = document.createElement("img");
    img.src = f.dataset.heat || f.dataset.image;
    img.alt = `part ${r.part_id}`;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    cap.textContent = `#${r.part_id} ${r.tag === "reject" ? "" : r.tag + " "}${fmt(r.score, 3)}`;
    f.append(img, cap);
    f.addEventListener("click", () => openModal(f, r));
    frag.appendChild(f);
  }
  box.replaceChildren(frag);
}

function openModal(f, r) {
  $("modal-img").src = f.dataset.image;
  const heat = $("modal-heat");
  if (f.dataset.heat) { heat.src = f.dataset.heat; heat.hidden = false; } else { heat.hidden = true; }
  $("modal-caption").textContent = `part ${r.part_id} · ${r.tag} · score ${fmt(r.score, 4)}`;
  $("modal").hidden = false;
}

function renderHealth(s) {
  const c = s.health.camera, b = s.health.backend;
  const cls = (st) => st === "ok" ? "ok" : (st === "error" ? "err" : "warn");
  $("h-camera").innerHTML = `<span class="${cls(c.state)}">${esc(c.state)}</span> · ${esc(c.name)} (${esc(c.type)}) · ${c.frames} frames` +
    (c.last_frame_s !== null ? ` · last ${fmt(c.last_frame_s, 0)} s ago` : "") +
    ` · reconnects ${c.reconnects} · missed ${c.missed}`;
  $("h-backend").innerHTML = `<span class="${cls(b.state)}">${esc(b.state)}</span> · ${esc(b.type)} · ${esc(b.model_id || "–")}` +
    ` · infer ${fmt(b.infer_ms_mean, 1)} ms · capture→decision ${fmt(b.e2e_ms_mean, 1)} ms · errors ${b.errors}`;
  $("h-outputs").innerHTML = s.health.outputs.map((o) =>
    `<div data-output="${esc(o.name)}"><span class="${cls(o.state)}">${esc(o.state)}</span> · ${esc(o.name)} (${esc(o.type)}) · errors ${o.errors}</div>`).join("");
}

function render(s) {
  $("station").textContent = s.station;
  $("bundle-id").textContent = s.bundle.id || "–";
  $("bundle-precision").textContent = `${s.bundle.backend} ${s.bundle.precision || ""}`;
  $("run-id").textContent = s.run_id;
  const L = s.line;
  badge($("line-ready"), L.ready ? "on" : (L.stopped ? "off" : "bad"), L.stopped ? "STOPPED" : "READY");
  badge($("line-heartbeat"), L.heartbeat ? "on" : "bad");
  badge($("line-fault"), L.fault ? "bad" : "off", L.fault ? "FAULT" : "NO FAULT");
  $("line-fault").title = L.fault || "";
  badge($("line-rejection"), L.rejection_enabled ? "on" : "warn", L.rejection_enabled ? "REJECTION ON" : "REJECTION OFF");
  $("ppm").textContent = s.parts_per_min;
  $("reject-rate").textContent = s.reject_rate === null ? "–" : (s.reject_rate * 100).toFixed(1) + " %";
  $("parts").textContent = s.counts.parts;
  $("accepted").textContent = s.counts.accept;
  $("rejected").textContent = s.counts.reject;
  $("review").textContent = s.counts.review;
  $("failsafe-total").textContent = s.counts.failsafe;
  $("failsafe-reasons").innerHTML = Object.entries(s.failsafe_by_reason)
    .map(([k, v]) => `<li data-reason="${esc(k)}" data-count="${v}">${esc(k)}: ${v}</li>`).join("");
  $("accept-edge").textContent = fmt(s.band.accept_edge, 4);
  $("reject-edge").textContent = fmt(s.band.reject_edge, 4);
  renderStrip(s);
  renderRejects(s);
  renderHistogram(s);
  renderHealth(s);
  $("notes").innerHTML = s.notes.map((n) =>
    `<li>${new Date(n.t * 1000).toLocaleTimeString()} ${esc(n.kind)}: ${esc(n.message)}</li>`).join("");
  document.body.dataset.version = s.version;
}

async function act(action) {
  const out = $("action-result");
  const token = $("token").value || sessionStorage.getItem("edgekit-token") || "";
  try {
    const r = await fetch("/api/control/" + action, { method: "POST", headers: { "X-Edgekit-Token": token } });
    const body = await r.json();
    out.className = "result " + (body.ok ? "ok" : "err");
    out.textContent = body.message || (body.ok ? "done" : "refused");
    if (r.status !== 403 && token) sessionStorage.setItem("edgekit-token", token);
  } catch (e) {
    out.className = "result err";
    out.textContent = "no answer from the station: " + e;
  }
}

function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => badge($("conn"), "on", "live");
  es.onmessage = (ev) => {
    badge($("conn"), "on", "live");
    pending = JSON.parse(ev.data);
    if (!document.hidden) { render(pending); pending = null; }  // a hidden tab renders when shown
  };
  es.onerror = () => badge($("conn"), "bad", "disconnected");  // EventSource retries by itself
}

document.addEventListener("visibilitychange", () => { if (!document.hidden && pending) { render(pending); pending = null; } });
document.querySelectorAll("button[data-action]").forEach((b) => b.addEventListener("click", () => act(b.dataset.action)));
$("modal-close").addEventListener("click", () => { $("modal").hidden = true; });
$("modal").addEventListener("click", (e) => { if (e.target === $("modal")) $("modal").hidden = true; });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("modal").hidden = true; });
connect();
