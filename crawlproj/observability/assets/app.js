// crawlproj status page: draws the state embedded in the page (window.INITIAL) at once, then
// polls /api/series and /api/state; charts on canvases.
"use strict";
const REFRESH_MS = 2000;
const MAX_POINTS = 5000;
// Tableau 10: distinct for up to 10 series; past that, hues spread evenly over the circle.
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac"];
function colorOf(i, n) {
  if (n <= PALETTE.length) return PALETTE[i];
  return `hsl(${Math.round(i * 360 / n)}, 70%, ${i % 2 ? 35 : 50}%)`;
}
let points = [];
let updates = 0;

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return Number(v).toFixed(digits === undefined ? 0 : digits);
}

// One chart: lines = [{name, values: [[t, v|null], ...]}]; returns how many points it drew.
function drawChart(canvasId, legendId, lines, opts) {
  const canvas = document.getElementById(canvasId);
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 460, h = canvas.clientHeight || 220;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const pad = {l: 52, r: 10, t: 8, b: 22};
  const log = !!(opts && opts.log);
  const tr = v => log ? Math.log10(Math.max(v, 0.01)) : v;
  let tmin = Infinity, tmax = -Infinity, vmin = log ? Infinity : 0, vmax = -Infinity;
  for (const line of lines) for (const [t, v] of line.values) {
    if (v === null || v === undefined) continue;
    tmin = Math.min(tmin, t); tmax = Math.max(tmax, t);
    vmin = Math.min(vmin, tr(v)); vmax = Math.max(vmax, tr(v));
  }
  ctx.strokeStyle = "#e3e6ed"; ctx.fillStyle = "#6b7385"; ctx.font = "11px system-ui, sans-serif";
  ctx.strokeRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
  if (!Number.isFinite(tmin)) {
    ctx.fillText("no data yet", pad.l + 8, pad.t + 16);
    document.getElementById(legendId).innerHTML = "";
    return 0;
  }
  if (log) { vmin = Math.floor(vmin); vmax = Math.ceil(Math.max(vmax, vmin + 1)); }
  else { vmax = vmax <= 0 ? 1 : vmax * 1.1; }
  if (tmax === tmin) tmax = tmin + 1;
  const x = t => pad.l + (t - tmin) / (tmax - tmin) * (w - pad.l - pad.r);
  const y = v => h - pad.b - (tr(v) - vmin) / (vmax - vmin) * (h - pad.t - pad.b);
  // grid and labels
  const ticks = log ? vmax - vmin : 4;
  for (let i = 0; i <= ticks; i++) {
    const val = vmin + (vmax - vmin) * i / ticks;
    const yy = h - pad.b - (val - vmin) / (vmax - vmin) * (h - pad.t - pad.b);
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(w - pad.r, yy); ctx.stroke();
    ctx.fillText(log ? fmt(Math.pow(10, val), val < 0 ? 2 : 0) : fmt(val, vmax < 10 ? 1 : 0), 4, yy + 4);
  }
  const span = tmax - tmin;
  for (let i = 0; i <= 4; i++) {
    const t = tmin + span * i / 4;
    const label = new Date(t * 1000).toLocaleTimeString();
    const tw = ctx.measureText(label).width;
    ctx.fillText(label, Math.max(pad.l, Math.min(x(t) - tw / 2, w - pad.r - tw)), h - 6);
  }
  let drawn = 0;
  const legend = [];
  lines.forEach((line, i) => {
    const color = colorOf(i, lines.length);
    ctx.strokeStyle = color; ctx.lineWidth = line.width || 1.5;
    ctx.beginPath();
    let pen = false;
    for (const [t, v] of line.values) {
      if (v === null || v === undefined) { pen = false; continue; }
      if (pen) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
      pen = true; drawn++;
    }
    ctx.stroke();
    const lastV = [...line.values].reverse().find(p => p[1] !== null && p[1] !== undefined);
    legend.push(`<span><i style="background:${color}"></i>${line.name} ${lastV ? fmt(lastV[1], lastV[1] < 1 ? 2 : 1) : ""}</span>`);
  });
  document.getElementById(legendId).innerHTML = legend.join("");
  return drawn;
}

function nodeNames() {
  const names = new Set();
  for (const p of points) for (const n of Object.keys(p.nodes || {})) names.add(n);
  return [...names].sort();
}

function opLines(field, source) {
  // latency of each operation: the worst node's figure at each point, or the dispatcher's
  const ops = new Map();
  for (const p of points) {
    const here = {};
    if (source === "nodes") {
      for (const node of Object.values(p.nodes || {})) {
        const rep = node.report;
        if (!rep || !rep.ops) continue;
        for (const [op, s] of Object.entries(rep.ops))
          if (s[field] !== undefined) here[op] = Math.max(here[op] || 0, s[field]);
      }
    } else {
      for (const [op, s] of Object.entries(p.ops || {}))
        if (s[field] !== undefined) here[op] = s[field];
    }
    for (const [op, v] of Object.entries(here)) {
      if (!ops.has(op)) ops.set(op, []);
      ops.get(op).push([p.t, v]);
    }
  }
  return [...ops.keys()].sort().map(op => ({name: op, values: ops.get(op)}));
}

function sum(p, field) {
  return Object.values(p.nodes || {}).reduce((a, n) => a + (n[field] || 0), 0);
}

function draw() {
  const names = nodeNames();
  let drawn = 0;
  drawn += drawChart("c-rate", "l-rate", [
    {name: "cluster", values: points.map(p => [p.t, p.rate]), width: 2.5},
    ...names.map(n => ({name: n, values: points.map(p => [p.t, p.nodes && p.nodes[n] ? p.nodes[n].rate : null])})),
  ]);
  drawn += drawChart("c-queues", "l-queues", [
    {name: "frontier", values: points.map(p => [p.t, p.frontier])},
    {name: "available", values: points.map(p => [p.t, p.available])},
    {name: "queued on nodes", values: points.map(p => [p.t, sum(p, "queued")])},
    {name: "in flight", values: points.map(p => [p.t, sum(p, "inflight")])},
  ]);
  drawn += drawChart("c-leases", "l-leases", [
    {name: "all", values: points.map(p => [p.t, p.leases]), width: 2.5},
    ...names.map(n => ({name: n, values: points.map(p => [p.t, p.nodes && p.nodes[n] ? p.nodes[n].leases : null])})),
  ]);
  drawn += drawChart("c-p50", "l-p50", opLines("p50", "nodes"), {log: true});
  drawn += drawChart("c-p99", "l-p99", opLines("p99", "nodes"), {log: true});
  drawn += drawChart("c-d50", "l-d50", opLines("p50", "dispatcher"), {log: true});
  drawn += drawChart("c-d99", "l-d99", opLines("p99", "dispatcher"), {log: true});
  document.getElementById("points").textContent = String(drawn);
  const last = points[points.length - 1];
  if (last) {
    document.getElementById("last-t").textContent = new Date(last.t * 1000).toLocaleTimeString();
    document.getElementById("k-rate").textContent = fmt(last.rate, 1);
    document.getElementById("k-pages").textContent = fmt(last.pages);
    document.getElementById("k-frontier").textContent = fmt(last.frontier);
    document.getElementById("k-leases").textContent = fmt(last.leases);
    document.getElementById("k-seen").textContent = fmt(last.seen);
    document.getElementById("k-nodes").textContent = fmt(last.nodes_alive);
    document.getElementById("k-busy").textContent = fmt(100 * last.busy, 0) + "%";
  }
}

function drawNodes(state) {
  const rates = (state.observability || {}).node_rates || {};
  const rows = Object.entries(state.nodes || {}).sort().map(([name, n]) => {
    const s = n.stats || {};
    return `<tr><td>${name}</td><td>${n.alive ? "yes" : "no"}</td><td>${fmt(s.response_received_count)}</td>` +
      `<td>${fmt(rates[name], 1)}</td><td>${fmt(s.queued)}</td><td>${fmt(s.inflight)}</td>` +
      `<td>${fmt(n.leases)}</td><td>${fmt(n.owned)}</td><td>${s["node/cpu"] === undefined ? "–" : fmt(100 * s["node/cpu"]) + "%"}</td>` +
      `<td>${n.stats_ago === null ? "–" : fmt(n.stats_ago, 1) + " s"}</td></tr>`;
  });
  document.querySelector("#nodes tbody").innerHTML = rows.join("");
}

function show(series, state) {
  points = points.concat(series.points).slice(-MAX_POINTS);
  draw();
  drawNodes(state);
  updates++;
  document.getElementById("updates").textContent = String(updates);
  const status = document.getElementById("status");
  status.textContent = "live"; status.className = "";
}

async function refresh() {
  try {
    const since = points.length ? points[points.length - 1].t : 0;
    const series = await (await fetch(`api/series?since=${since}`, {cache: "no-store"})).json();
    const state = await (await fetch("api/state", {cache: "no-store"})).json();
    show(series, state);
  } catch (err) {
    const status = document.getElementById("status");
    status.textContent = "no answer: " + err; status.className = "error";
  }
}

if (window.INITIAL) show(window.INITIAL.series, window.INITIAL.state);  // the first paint has data
else refresh();
setInterval(refresh, REFRESH_MS);
window.addEventListener("resize", draw);
