// Pulse live map: H3 cells drawn from their boundaries (no tiles, no CDN), coloured by forecast demand or
// surge; horizon switch; click a cell for its forecast, explanation and repositioning moves.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000; // a live city publishes a bucket every 90 s at 10x: the map follows within seconds
const state = {
  key: null,
  serviceTypes: [1, 2],
  horizons: [30, 60, 90],
  serviceType: 1,
  metric: "p50",
  horizon: 30,
  drivers: 5,
  cells: [],
  heat: new Map(),
  selected: null,
  project: null,
};
window.pulseMap = state; // for the browser test and curious operators

const $ = (sel) => document.querySelector(sel);
const fmt = (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

function readKey() {
  const m = /(?:^|[#&])key=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("pulse-api-key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.key = sessionStorage.getItem("pulse-api-key");
}

class AuthError extends Error {}

async function api(path) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const res = await fetch(path, { headers });
  if (res.status === 401 || res.status === 403) {
    $("#auth").hidden = false;
    $("#auth-message").textContent = res.status === 401 ? "This server needs an API key." : "That key was not accepted.";
    throw new AuthError(String(res.status));
  }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return res.json();
}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// Colour ramps: dark blue → teal → yellow → red.
const STOPS = [[13, 42, 84], [22, 128, 140], [120, 200, 90], [250, 220, 60], [240, 80, 50]];
function ramp(t) {
  t = Math.max(0, Math.min(1, t));
  const x = t * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const f = x - i;
  const c = STOPS[i].map((a, k) => Math.round(a + (STOPS[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function domain() {
  if (state.metric === "surge") return [1, 3.5];
  let max = 1;
  for (const v of state.heat.values()) max = Math.max(max, v.p50);
  return [0, max];
}

function buildControls() {
  const sel = $("#service-type");
  sel.innerHTML = "";
  for (const s of state.serviceTypes) {
    const o = document.createElement("option");
    o.value = s;
    o.textContent = `type ${s}`;
    sel.appendChild(o);
  }
  sel.value = state.serviceType;
  sel.onchange = async () => {
    state.serviceType = Number(sel.value);
    await loadCells();
    await loadHeat();
    if (state.selected) await selectCell(state.selected);
  };
  const hz = $("#horizons");
  hz.innerHTML = "";
  for (const h of state.horizons) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.horizon = h;
    b.textContent = `${h} min`;
    b.setAttribute("aria-pressed", String(h === state.horizon));
    b.onclick = () => setHorizon(h);
    hz.appendChild(b);
  }
  for (const b of document.querySelectorAll("[data-metric]")) {
    b.onclick = () => {
      state.metric = b.dataset.metric;
      for (const o of document.querySelectorAll("[data-metric]")) o.setAttribute("aria-pressed", String(o === b));
      paint();
    };
  }
  $("#drivers").onchange = () => {
    state.drivers = Math.max(1, Math.min(1000, Number($("#drivers").value) || 1));
    if (state.selected) selectCell(state.selected);
  };
}

async function setHorizon(h) {
  state.horizon = h;
  document.body.dataset.horizon = h;
  for (const b of document.querySelectorAll("[data-horizon]")) b.setAttribute("aria-pressed", String(Number(b.dataset.horizon) === h));
  await loadHeat();
  if (state.selected) renderPanel();
}

function projection(cells) {
  let minLat = Infinity, maxLat = -Infinity, minLng = Infinity, maxLng = -Infinity;
  for (const c of cells) for (const [lat, lng] of c.boundary) {
    minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    minLng = Math.min(minLng, lng); maxLng = Math.max(maxLng, lng);
  }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const scale = 1000 / Math.max((maxLng - minLng) * k, maxLat - minLat, 1e-9);
  const project = ([lat, lng]) => [((lng - minLng) * k * scale).toFixed(2), ((maxLat - lat) * scale).toFixed(2)];
  const width = (maxLng - minLng) * k * scale, height = (maxLat - minLat) * scale;
  return { project, viewBox: `-10 -10 ${(width + 20).toFixed(1)} ${(height + 20).toFixed(1)}` };
}

async function loadCells() {
  const body = await api(`/v1/cells?service_type=${state.serviceType}`);
  state.cells = body.cells;
  const svg = $("#map");
  svg.innerHTML = "";
  const { project, viewBox } = projection(state.cells);
  state.project = project;
  svg.setAttribute("viewBox", viewBox);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const defs = document.createElementNS(SVG_NS, "defs");
  defs.innerHTML = '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#fff"/></marker>';
  svg.appendChild(defs);
  const g = document.createElementNS(SVG_NS, "g");
  g.id = "cells";
  for (const c of state.cells) {
    const p = document.createElementNS(SVG_NS, "polygon");
    p.setAttribute("points", c.boundary.map((ll) => project(ll).join(",")).join(" "));
    p.classList.add("cell");
    p.dataset.hex = c.hex_id;
    p.addEventListener("click", () => selectCell(c.hex_id));
    const title = document.createElementNS(SVG_NS, "title");
    p.appendChild(title);
    g.appendChild(p);
  }
  svg.appendChild(g);
  const moves = document.createElementNS(SVG_NS, "g");
  moves.id = "moves-layer";
  svg.appendChild(moves);
}

async function loadHeat() {
  const body = await api(`/v1/heatmap?service_type=${state.serviceType}&horizon=${state.horizon}`);
  state.heat = new Map(body.cells.map((c) => [c.hex_id, c]));
  state.reference = body.reference;
  paint();
  const degraded = body.degraded_cells ? ` · ${body.degraded_cells} cells on fallback` : "";
  setStatus(`${body.cells.length} cells · +${body.horizon_min} min from ${body.reference.replace("T", " ").replace("Z", " UTC")} · model v${body.model_version ?? "–"}${degraded}`);
}

function paint() {
  const [lo, hi] = domain();
  for (const p of document.querySelectorAll("#cells .cell")) {
    const v = state.heat.get(p.dataset.hex);
    if (!v) continue;
    const value = state.metric === "surge" ? v.surge : v.p50;
    p.setAttribute("fill", value === null ? "#3a4654" : ramp((value - lo) / (hi - lo || 1)));
    p.classList.toggle("degraded", v.degraded);
    p.firstChild.textContent = `${p.dataset.hex}\np50 ${fmt(v.p50, 0)} (p10 ${fmt(v.p10, 0)}–p90 ${fmt(v.p90, 0)})\nsurge ${fmt(v.surge, 2)}`;
  }
  $("#legend").innerHTML = `<div>${state.metric === "surge" ? "Surge multiplier" : "Requests per 15 min (p50)"} · +${state.horizon} min</div>
    <div class="bar" style="background:linear-gradient(to right, ${[0, .25, .5, .75, 1].map(ramp).join(",")})"></div>
    <div class="ends"><span>${fmt(lo, state.metric === "surge" ? 1 : 0)}</span><span>${fmt(hi, state.metric === "surge" ? 1 : 0)}</span></div>`;
}

async function selectCell(hex) {
  state.selected = hex;
  for (const p of document.querySelectorAll("#cells .cell")) p.classList.toggle("selected", p.dataset.hex === hex);
  try {
    const [forecast, recs] = await Promise.all([
      api(`/v1/forecast?hex_id=${hex}&service_type=${state.serviceType}`),
      api(`/v1/recommendations?hex_id=${hex}&service_type=${state.serviceType}&drivers=${state.drivers}`),
    ]);
    state.forecast = forecast;
    state.recs = recs;
    renderPanel();
  } catch (err) {
    if (!(err instanceof AuthError)) $("#panel").innerHTML = `<p class="error">${err.message}</p>`;
  }
}

function el(tag, attrs = {}, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}

function renderPanel() {
  const f = state.forecast, r = state.recs;
  if (!f) return;
  const panel = $("#panel");
  panel.innerHTML = "";
  panel.appendChild(el("h2", { id: "cell-id" }, f.hex_id));
  const badge = el("span", { class: `badge ${f.degraded ? "degraded" : "ok"}`, id: "cell-badge" },
    f.degraded ? `fallback: ${f.degraded_reason}` : `model v${f.model_version}`);
  panel.appendChild(badge);
  panel.appendChild(el("p", { class: "hint" }, `origin ${f.origin.replace("T", " ").replace("Z", " UTC")}`));

  panel.appendChild(el("h3", {}, "Forecast (requests per 15 min)"));
  const table = el("table", { id: "forecast-table" });
  table.innerHTML = "<tr><th>horizon</th><th>p10</th><th>p50</th><th>p90</th><th>supply</th><th>surge</th></tr>";
  for (const h of f.forecasts) {
    const tr = el("tr", h.horizon_min === state.horizon ? { class: "current" } : {});
    for (const v of [`+${h.horizon_min} min`, fmt(h.p10, 0), fmt(h.p50, 0), fmt(h.p90, 0), fmt(h.expected_supply, 0), fmt(h.surge, 2)]) tr.appendChild(el("td", {}, v));
    table.appendChild(tr);
  }
  panel.appendChild(table);

  const current = f.forecasts.find((h) => h.horizon_min === state.horizon) || f.forecasts[0];
  panel.appendChild(el("h3", {}, `Why (+${current.horizon_min} min)`));
  const why = el("ul", { id: "explanation" });
  if (current.factors.length) for (const x of current.factors) why.appendChild(el("li", {}, x.text));
  else why.appendChild(el("li", {}, current.explanation));
  panel.appendChild(why);

  panel.appendChild(el("h3", {}, `Moves for ${r.drivers} driver${r.drivers === 1 ? "" : "s"}`));
  const moves = el("ol", { id: "moves" });
  for (const m of r.moves) {
    const surge = m.surge_delta === null ? "" : `, surge ${m.surge_delta >= 0 ? "+" : ""}${fmt(m.surge_delta, 2)}`;
    moves.appendChild(el("li", { "data-target": m.target_hex_id },
      `${m.drivers} → ${m.target_hex_id.slice(0, 11)}… ETA ${fmt(m.eta_min)} min, gain ${fmt(m.expected_gain, 2)} rides${surge}, confidence ${fmt(m.confidence, 2)}`));
  }
  panel.appendChild(moves);
  panel.appendChild(el("p", { class: "hint", id: "staying" },
    r.moves.length ? `${r.drivers_staying} stay.` : "No move beats staying here."));
  drawMoves(r);
}

function drawMoves(r) {
  const layer = $("#moves-layer");
  layer.innerHTML = "";
  const byHex = new Map(state.cells.map((c) => [c.hex_id, c]));
  const from = byHex.get(r.hex_id);
  if (!from) return;
  const [x1, y1] = state.project([from.lat, from.lng]);
  for (const m of r.moves) {
    const to = byHex.get(m.target_hex_id);
    if (!to) continue;
    const [x2, y2] = state.project([to.lat, to.lng]);
    const line = document.createElementNS(SVG_NS, "line");
    Object.entries({ x1, y1, x2, y2, class: "move" }).forEach(([k, v]) => line.setAttribute(k, v));
    layer.appendChild(line);
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", x2);
    label.setAttribute("y", y2);
    label.setAttribute("class", "move-label");
    label.textContent = `${m.drivers}`;
    layer.appendChild(label);
  }
}

async function boot() {
  readKey();
  $("#auth").onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem("pulse-api-key", $("#api-key").value);
    $("#auth").hidden = true;
    boot();
  };
  try {
    try {
      const model = await api("/v1/model");
      state.horizons = model.horizons;
      state.serviceTypes = model.service_types;
    } catch (err) {
      if (err instanceof AuthError) throw err; // no model: climatology fallback still draws
    }
    state.serviceType = state.serviceTypes[0];
    state.horizon = state.horizons[0];
    document.body.dataset.horizon = state.horizon;
    buildControls();
    await loadCells();
    await loadHeat();
    document.body.dataset.ready = "1";
  } catch (err) {
    if (!(err instanceof AuthError)) setStatus(`Could not load: ${err.message}`, true);
  }
}

setInterval(() => { if (document.body.dataset.ready) loadHeat().catch((e) => setStatus(e.message, true)); }, REFRESH_MS);
window.addEventListener("hashchange", () => { if (/key=/.test(location.hash)) { $("#auth").hidden = true; boot(); } });
boot();
