// dhashmap dashboard: polls the node that serves it (and, when reachable, every other member's
// /v1/node/stats) and redraws. Plain JavaScript, no dependencies, nothing from other sites.
"use strict";

const POLL_MS = 2000;
const HISTORY = 60;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                 "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#8c564b"];

const previous = {};      // member id -> last stats, for rates
const rates = {};         // member id -> computed numbers
const history = [];       // request rate of this node, oldest first
let ringSignature = "";
let ringColours = {};     // node id -> colour, the same in the ring, the legend and the members table

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);  // CSSOM: the page's CSP allows no inline styles
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function colours(ids) {
  const out = {};
  ids.forEach((id, i) => {
    out[id] = i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360}, 55%, 55%)`;
  });
  return out;
}

function formatSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function formatRate(r) {
  return r === null || r === undefined ? "—" : r.toFixed(r < 10 ? 1 : 0);
}

// Per operation: requests/s, errors/s, mean and p99 latency over the last poll interval.
function computeRates(now, before) {
  const out = {total: 0, ops: {}};
  const dt = before ? now.time - before.time : 0;
  for (const [op, cur] of Object.entries(now.requests)) {
    const old = before && before.requests[op];
    const entry = {count: cur.count, rate: null, errors: null, mean: null, p99: null};
    if (old && dt > 0) {
      const n = cur.count - old.count;
      let errors = 0;
      for (const [code, c] of Object.entries(cur.by_code)) {
        if (Number(code) >= 500) errors += c - ((old.by_code || {})[code] || 0);
      }
      entry.rate = n / dt;
      entry.errors = errors / dt;
      out.total += entry.rate;
      if (n > 0) {
        entry.mean = (cur.sum_seconds - old.sum_seconds) / n;
        const oldBuckets = Object.fromEntries(old.buckets);
        for (const [le, c] of cur.buckets) {
          if (c - (oldBuckets[le] || 0) >= 0.99 * n) { entry.p99 = le === "+Inf" ? Infinity : Number(le); break; }
        }
      }
    }
    out.ops[op] = entry;
  }
  return out;
}

function summary(r) {
  // Across operations: total rate, request-weighted mean, worst p99.
  let rate = 0, weighted = 0, p99 = null;
  for (const e of Object.values(r.ops)) {
    if (e.rate) { rate += e.rate; if (e.mean !== null) weighted += e.mean * e.rate; }
    if (e.p99 !== null && (p99 === null || e.p99 > p99)) p99 = e.p99;
  }
  return {rate, mean: rate > 0 ? weighted / rate : null, p99};
}

function renderMembers(members, ring, stats) {
  const held = {};
  for (const row of ring.table) for (const owner of row.owners) held[owner] = (held[owner] || 0) + 1;
  const tbody = document.querySelector("#members tbody");
  tbody.replaceChildren(...members.map((m) => {
    const s = stats[m.id];
    const r = rates[m.id] ? summary(rates[m.id]) : null;
    const a = m.addresses;
    return el("tr", {"data-member": m.id, "data-state": m.state},
      el("td", {}, el("span", {class: "swatch", style: {background: ringColours[m.id] || "#ccc"}}), m.id),
      el("td", {}, el("span", {class: `state state-${m.state}`}, m.state)),
      el("td", {}, `${a.host}:${a.rest}`),
      el("td", {class: "num"}, m.incarnation),
      el("td", {class: "num"}, held[m.id] || 0),
      el("td", {class: "num"}, r ? formatRate(r.rate) : "—"),
      el("td", {class: "num"}, r ? formatSeconds(r.mean) : "—"),
      el("td", {class: "num"}, r && r.p99 !== null ? "≤ " + formatSeconds(r.p99) : "—"),
      el("td", {class: "num"}, s ? s.storage.keys : "—"),
      el("td", {class: "num"}, s ? s.hints.queued : "—"));
  }));
}

function arcPath(cx, cy, r0, r1, a0, a1) {
  const large = a1 - a0 > Math.PI ? 1 : 0;
  const p = (r, a) => `${(cx + r * Math.sin(a)).toFixed(2)},${(cy - r * Math.cos(a)).toFixed(2)}`;
  return `M${p(r1, a0)}A${r1},${r1} 0 ${large} 1 ${p(r1, a1)}L${p(r0, a1)}A${r0},${r0} 0 ${large} 0 ${p(r0, a0)}Z`;
}

// Concentric rings: the outer one colours each partition by its first owner, the next by its second, ...
function renderRing(ring) {
  const signature = JSON.stringify(ring.table.map((row) => row.owners));
  if (signature === ringSignature) return;
  ringSignature = signature;
  const root = document.getElementById("ring");
  root.replaceChildren();
  const q = ring.partitions, rings = Math.min(ring.replicas, 3);
  const cx = 160, cy = 160, width = 30, gap = 4, outer = 150;
  for (let level = 0; level < rings; level++) {
    const r1 = outer - level * (width + gap), r0 = r1 - width;
    let start = 0;
    for (let p = 1; p <= q; p++) {
      const owner = (ring.table[start].owners || [])[level];
      const next = p < q ? (ring.table[p].owners || [])[level] : undefined;
      if (p === q || next !== owner) {
        const a0 = (2 * Math.PI * start) / q, a1 = (2 * Math.PI * p) / q;
        const path = svg("path", {d: arcPath(cx, cy, r0, r1, a0, Math.min(a1, a0 + 2 * Math.PI - 1e-4)),
                                  fill: owner ? ringColours[owner] : "#e6e8ec",
                                  "data-owner": owner || "", "data-partitions": `${start}-${p - 1}`});
        path.append(svg("title"));
        path.lastChild.textContent = `partitions ${start}–${p - 1}: ${owner || "no node"} (replica ${level + 1})`;
        root.append(path);
        start = p;
      }
    }
  }
  const label = svg("text", {x: cx, y: cy + 5, "text-anchor": "middle", "font-size": "14"});
  label.textContent = `Q=${q}, N=${ring.replicas}`;
  root.append(label);
  document.getElementById("ring-note").textContent =
    `Each partition is an arc; the outer ring is coloured by its first owner, the inner rings by its next ` +
    `${rings - 1 === 1 ? "owner" : "owners"}. Hover an arc for its partitions.`;
  const legend = document.getElementById("legend");
  legend.replaceChildren(...ring.nodes.map((id) =>
    el("li", {"data-node": id}, el("span", {class: "swatch", style: {background: ringColours[id]}}), id)));
}

function renderRequests(r) {
  const tbody = document.querySelector("#requests tbody");
  tbody.replaceChildren(...Object.entries(r.ops).map(([op, e]) => el("tr", {"data-op": op},
    el("td", {}, op),
    el("td", {class: "num"}, formatRate(e.rate)),
    el("td", {class: "num"}, formatRate(e.errors)),
    el("td", {class: "num"}, formatSeconds(e.mean)),
    el("td", {class: "num"}, e.p99 === null ? "—" : "≤ " + formatSeconds(e.p99)),
    el("td", {class: "num"}, e.count))));
  const spark = document.getElementById("sparkline");
  const top = Math.max(1, ...history);
  const step = 300 / (HISTORY - 1), first = HISTORY - history.length;  // the newest point on the right
  const points = history.map((v, i) => `${(first + i) * step},${58 - (v / top) * 54}`).join(" ");
  const label = svg("text", {x: 2, y: 12, "font-size": "10", fill: "#5a6273"});
  label.textContent = `${formatRate(history[history.length - 1] || 0)} req/s (max ${formatRate(top)})`;
  spark.replaceChildren(svg("polyline", {points, fill: "none", stroke: "#4e79a7", "stroke-width": "1.5"}), label);
}

function renderMovement(stats) {
  const targets = Object.entries(stats.hints.by_target);
  document.querySelector("#hints tbody").replaceChildren(...(targets.length ? targets.map(([id, n]) =>
    el("tr", {"data-target": id}, el("td", {}, id), el("td", {class: "num"}, n))) :
    [el("tr", {}, el("td", {colspan: "2", class: "note"}, "no hinted writes held"))]));
  document.getElementById("hints-summary").textContent =
    `${stats.hints.queued} held, ${stats.hints.delivered} handed to their nodes since start.`;
  const transfers = stats.transfers;
  document.querySelector("#transfers tbody").replaceChildren(...(transfers.length ? transfers.map((t) =>
    el("tr", {}, el("td", {}, typeof t === "string" ? t : JSON.stringify(t)))) :
    [el("tr", {}, el("td", {class: "note"}, "no partition transfers in flight"))]));
}

async function statsOf(member, self) {
  if (member.id === self) return getJSON("/v1/node/stats");
  const a = member.addresses;
  if (member.state === "dead" || member.state === "left" || !a.rest) return null;
  try {
    return await getJSON(`${location.protocol}//${a.host}:${a.rest}/v1/node/stats`);
  } catch (e) {
    return null;  // not reachable from this browser: the row shows dashes
  }
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const [membersDoc, ring] = await Promise.all([getJSON("/v1/cluster/members"), getJSON("/v1/cluster/ring")]);
    const self = membersDoc.node;
    document.getElementById("node-id").textContent = `— ${self}`;
    document.title = `dhashmap — ${self}`;
    for (const span of document.querySelectorAll(".this-node")) span.textContent = self;
    const members = membersDoc.members.slice().sort((x, y) => (x.id < y.id ? -1 : 1));
    ringColours = colours([...new Set([...ring.nodes, ...members.map((m) => m.id)])].sort());
    const all = await Promise.all(members.map((m) => statsOf(m, self).catch(() => null)));
    const stats = {};
    members.forEach((m, i) => {
      const s = all[i];
      if (!s) return;
      stats[m.id] = s;
      rates[m.id] = computeRates(s, previous[m.id]);
      previous[m.id] = s;
    });
    if (rates[self]) {
      history.push(summary(rates[self]).rate);
      if (history.length > HISTORY) history.shift();
    }
    renderRing(ring);
    renderMembers(members, ring, stats);
    if (stats[self]) { renderRequests(rates[self]); renderMovement(stats[self]); }
    status.className = "status";
    status.textContent = `${members.length} members · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    status.className = "status error";
    status.textContent = `cannot reach the node (${e.message}); retrying`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
