// The built-in dashboard: the fleet as a utilization heatmap, one GPU's charts over a chosen
// range, live updates and the pipeline's health. Plain browser JavaScript, no build step;
// charts by uPlot (vendored, see vendor/uplot). Every data call carries the API key from this
// tab's session storage in the X-API-Key header; the key never goes into a URL.
'use strict';

const KEY_STORE = 'gpu-telemetry-api-key';
const RANGES = {
  '15m': { seconds: 15 * 60, step: null },
  '1h': { seconds: 3600, step: '15s' },
  '6h': { seconds: 6 * 3600, step: '1m' },
  '24h': { seconds: 24 * 3600, step: '5m' },
  '7d': { seconds: 7 * 24 * 3600, step: '30m' },
};
// A GPU whose newest sample is older than this is drawn faded.
const STALE_MS = 30000;

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  gpus: new Map(),
  selected: null,
  chart: null,
  chartKey: '',
  liveEvents: 0,
  lastEventAt: 0,
  stream: null,
  dirty: new Set(),
  renderQueued: false,
  tiles: new Map(), // uuid → its tile element (no DOM search per update)
  drawnKey: '',     // what the chart on screen shows: uuid|metric|range|agg
};

const $ = (sel) => document.querySelector(sel);

// Builds an element; children are nodes or text (always as text: data is never parsed as HTML).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') el.className = v;
    else if (k === 'title') el.title = v;
    else if (k.startsWith('data-')) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function showError(msg) { $('#error').textContent = msg || ''; }

class Unauthorized extends Error {}

async function api(path) {
  const r = await fetch(path, { headers: { 'X-API-Key': state.key }, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized('the API key was refused');
  if (!r.ok) {
    let msg = `HTTP ${r.status}`;
    try { msg = (await r.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(`${path.split('?')[0]}: ${msg}`);
  }
  return r.json();
}

// ---- sign-in ---------------------------------------------------------------------------

function showLogin(message) {
  $('#dashboard').hidden = true;
  $('#sign-out').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
  $('#key').focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  setLive(false);
  showLogin(message);
}

$('#login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.key = $('#key').value.trim();
  $('#key').value = '';
  start();
});
$('#sign-out').addEventListener('click', () => signOut(''));

async function start() {
  if (!state.key) { showLogin(''); return; }
  let list;
  try {
    list = await api('/api/v1/gpus');
  } catch (e) {
    if (e instanceof Unauthorized) { signOut('That key was refused.'); return; }
    showLogin(`Cannot reach the API: ${e.message}`);
    return;
  }
  sessionStorage.setItem(KEY_STORE, state.key);
  $('#login').hidden = true;
  $('#dashboard').hidden = false;
  $('#sign-out').hidden = false;
  state.gpus.clear();
  for (const g of list.gpus) state.gpus.set(g.uuid, g);
  renderFleet();
  const first = [...state.gpus.values()].sort(byNodeIndex)[0];
  if (first && !state.selected) select(first.uuid);
  else if (state.selected) select(state.selected);
  stream();
  pipeline();
}

// ---- fleet heatmap ---------------------------------------------------------------------

function byNodeIndex(a, b) {
  return a.node === b.node ? a.index - b.index : (a.node < b.node ? -1 : 1);
}

// Utilization 0–100 → a colour from dark blue (idle) through green and yellow to red.
function heat(u) {
  if (u === undefined || u === null) return 'hsl(210, 10%, 30%)';
  const t = Math.max(0, Math.min(1, u / 100));
  const stops = [[220, 60, 22], [160, 70, 38], [60, 85, 50], [0, 80, 55]];
  const x = t * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const mix = (k) => stops[i][k] + (stops[i + 1][k] - stops[i][k]) * f;
  return `hsl(${mix(0).toFixed(0)}, ${mix(1).toFixed(0)}%, ${mix(2).toFixed(0)}%)`;
}

function podsOf(g) {
  const pods = [...(g.pods || [])];
  for (const m of g.mig_devices || []) pods.push(...(m.pods || []));
  return pods;
}

function badges(g, inTile) {
  const out = [];
  const status = g.health && g.health.status;
  if (status === 'degraded' || status === 'failed') {
    out.push(h('span', { class: `badge ${status}`, title: (g.health.reasons || []).join('\n') }, status));
  } else if (!inTile && status) {
    out.push(h('span', { class: `badge ${status === 'ok' ? 'ok' : ''}` }, status));
  }
  if (g.xid && g.xid.last) {
    out.push(h('span', { class: 'badge xid', title: `last XID ${g.xid.last.code} at ${g.xid.last.at}` }, `XID ${g.xid.last.code}`));
  }
  return out;
}

function tile(g) {
  const u = g.latest ? g.latest.gpu_utilization_percent : undefined;
  const pods = podsOf(g);
  const podText = pods.length ? `${pods[0].namespace}/${pods[0].pod}` + (pods.length > 1 ? ` +${pods.length - 1}` : '') : '';
  const title = [
    `${g.name} #${g.index} on ${g.node}`, g.uuid,
    u === undefined ? 'no utilization reported' : `utilization ${u}%`,
    ...pods.map((p) => `pod ${p.namespace}/${p.pod} (${p.container})`),
  ].join('\n');
  const el = h('button', { class: 'tile', title, 'data-uuid': g.uuid },
    h('span', { class: 'idx' }, `#${g.index}`),
    h('span', { class: 'util' }, u === undefined ? '–' : `${Math.round(u)}%`),
    podText ? h('span', { class: 'pod' }, podText) : null,
    ...badges(g, true));
  el.style.background = heat(u);
  if (Date.now() - Date.parse(g.last_seen) > STALE_MS) el.classList.add('stale');
  if (g.uuid === state.selected) el.classList.add('selected');
  el.addEventListener('click', () => select(g.uuid));
  state.tiles.set(g.uuid, el);
  return el;
}

function renderFleet() {
  const byNode = new Map();
  for (const g of [...state.gpus.values()].sort(byNodeIndex)) {
    if (!byNode.has(g.node)) byNode.set(g.node, []);
    byNode.get(g.node).push(g);
  }
  const root = $('#heatmap');
  state.tiles.clear();
  root.replaceChildren(...[...byNode].map(([node, gpus]) =>
    h('div', { class: 'node', 'data-node': node },
      h('h3', {}, `${node} · ${gpus.length} GPU${gpus.length === 1 ? '' : 's'}`),
      h('div', { class: 'tiles' }, ...gpus.map(tile)))));
  summary();
  document.body.dataset.gpus = String(state.gpus.size);
}

// Replaces the tiles of GPUs that changed, once per frame at most.
function queueRender(uuid) {
  state.dirty.add(uuid);
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    const dirty = [...state.dirty];
    state.dirty.clear();
    for (const u of dirty) {
      const old = state.tiles.get(u);
      const g = state.gpus.get(u);
      if (old && g) old.replaceWith(tile(g));
      else { renderFleet(); break; }
    }
    summary();
    if (dirty.includes(state.selected)) facts(state.gpus.get(state.selected));
  });
}

function summary() {
  const gpus = [...state.gpus.values()];
  const utils = gpus.map((g) => g.latest && g.latest.gpu_utilization_percent).filter((u) => u !== undefined);
  const power = gpus.map((g) => g.latest && g.latest.power_usage_watts).filter((p) => p !== undefined);
  const nodes = new Set(gpus.map((g) => g.node)).size;
  const unhealthy = gpus.filter((g) => g.health && (g.health.status === 'degraded' || g.health.status === 'failed')).length;
  const avg = utils.length ? utils.reduce((a, b) => a + b, 0) / utils.length : 0;
  $('#fleet-summary').textContent =
    `${gpus.length} GPUs on ${nodes} node${nodes === 1 ? '' : 's'} · average utilization ${avg.toFixed(0)}%` +
    (power.length ? ` · ${(power.reduce((a, b) => a + b, 0) / 1000).toFixed(1)} kW` : '') +
    (unhealthy ? ` · ${unhealthy} unhealthy` : '');
}

// ---- one GPU ---------------------------------------------------------------------------

function facts(g) {
  if (!g) return;
  $('#gpu-title').textContent = `${g.name} #${g.index} on ${g.node}`;
  const f = (label, value) => (value === undefined || value === null || value === '' ? null
    : h('span', {}, `${label} `, h('b', {}, value)));
  const pods = podsOf(g);
  $('#gpu-facts').replaceChildren(...[
    f('UUID', g.uuid), f('PCI', g.pci_bus_id), f('driver', g.driver_version),
    f('last sample', new Date(g.last_seen).toLocaleTimeString()),
    f('pods', pods.map((p) => `${p.namespace}/${p.pod}`).join(', ')),
    g.health && g.health.reasons && g.health.reasons.length ? f('health', g.health.reasons.join('; ')) : null,
    g.xid && Object.keys(g.xid.counts || {}).length
      ? f('XIDs', Object.entries(g.xid.counts).map(([c, n]) => `${c}×${n}`).join(', ')) : null,
    h('span', {}, ...badges(g, false)),
  ].filter(Boolean));
}

function select(uuid) {
  const g = state.gpus.get(uuid);
  if (!g) return;
  const prev = state.selected;
  state.selected = uuid;
  for (const u of [prev, uuid]) {
    const el = u && state.tiles.get(u);
    if (el) el.classList.toggle('selected', u === uuid);
  }
  facts(g);
  const metrics = Object.keys(g.latest || {}).sort();
  const sel = $('#metric');
  const keep = metrics.includes(sel.value) ? sel.value : (metrics.includes('gpu_utilization_percent') ? 'gpu_utilization_percent' : metrics[0]);
  sel.replaceChildren(...metrics.map((m) => h('option', { value: m }, m)));
  if (keep) sel.value = keep;
  loadChart();
}

for (const id of ['#metric', '#range', '#agg']) $(id).addEventListener('change', () => loadChart());

async function loadChart() {
  const uuid = state.selected;
  const metric = $('#metric').value;
  const range = RANGES[$('#range').value];
  const agg = $('#agg').value;
  $('#agg').disabled = !range.step;
  if (!uuid || !metric) return;
  const end = new Date(Date.now() + 1000);
  const startT = new Date(end.getTime() - range.seconds * 1000);
  let q = `start_time=${startT.toISOString()}&end_time=${end.toISOString()}&metrics=${encodeURIComponent(metric)}`;
  q += range.step ? `&step=${range.step}&agg=${agg}` : '&limit=20000';
  const chartKey = `${uuid}|${metric}|${$('#range').value}|${agg}`;
  state.chartKey = chartKey;
  $('#chart-status').textContent = 'loading…';
  let body;
  try {
    body = await api(`/api/v1/gpus/${encodeURIComponent(uuid)}/telemetry?${q}`);
  } catch (e) {
    if (e instanceof Unauthorized) { signOut('The API key was refused.'); return; }
    $('#chart-status').textContent = e.message;
    return;
  }
  if (state.chartKey !== chartKey) return; // a newer choice is loading
  const xs = [];
  const ys = [];
  for (const s of body.samples) {
    const v = s[metric];
    if (v === undefined) continue;
    xs.push(Date.parse(s.timestamp) / 1000);
    ys.push(v);
  }
  draw(metric, xs, ys, range.step ? `${agg} per ${range.step}` : 'raw');
  state.drawnKey = chartKey;
  $('#chart-status').textContent = `${xs.length} point${xs.length === 1 ? '' : 's'}` +
    (body.truncated ? ' (truncated: the first ones of the range)' : '');
}

function draw(metric, xs, ys, how) {
  const el = $('#chart');
  const width = Math.max(320, el.clientWidth || 800);
  const opts = {
    width, height: 300,
    scales: { x: { time: true } },
    axes: [
      { stroke: '#8a96a3', grid: { stroke: '#2a333d' }, ticks: { stroke: '#2a333d' } },
      { stroke: '#8a96a3', grid: { stroke: '#2a333d' }, ticks: { stroke: '#2a333d' }, size: 60 },
    ],
    series: [{}, { label: `${metric} (${how})`, stroke: '#4fb0ff', width: 1.5, fill: 'rgba(79,176,255,0.12)' }],
  };
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot(opts, [xs, ys], el);
  document.body.dataset.chartPoints = String(xs.length);
}

// A live update of the selected GPU extends the raw 15-minute chart.
function extendChart(g) {
  if (!state.chart || g.uuid !== state.selected || $('#range').value !== '15m') return;
  // Only onto the chart of this very choice (not the previous one while a new one loads).
  if (state.drawnKey !== state.chartKey) return;
  const metric = $('#metric').value;
  const v = g.latest && g.latest[metric];
  if (v === undefined) return;
  const t = Date.parse(g.last_seen) / 1000;
  const [xs, ys] = state.chart.data;
  if (xs.length && t <= xs[xs.length - 1]) return;
  const from = t - RANGES['15m'].seconds;
  let i = 0;
  while (i < xs.length && xs[i] < from) i++;
  const nx = xs.slice(i); nx.push(t);
  const ny = ys.slice(i); ny.push(v);
  state.chart.setData([nx, ny]);
  document.body.dataset.chartPoints = String(nx.length);
}

// ---- live updates (server-sent events read through fetch, so the key goes in a header) --

function setLive(on) {
  const el = $('#live');
  el.classList.toggle('on', on);
  el.classList.toggle('off', !on);
  el.textContent = on ? `live: ${state.liveEvents} updates` : 'live: off';
}

async function stream() {
  if (state.stream) state.stream.abort();
  const ctl = new AbortController();
  state.stream = ctl;
  try {
    const r = await fetch('/api/v1/gpus/stream', {
      headers: { 'X-API-Key': state.key, Accept: 'text/event-stream' },
      signal: ctl.signal,
      cache: 'no-store',
    });
    if (r.status === 401) { signOut('The API key was refused.'); return; }
    if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
    setLive(true);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        onEvent(block);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
    showError(`live updates interrupted (${e.message}); reconnecting`);
  }
  if (state.stream !== ctl) return;
  setLive(false);
  setTimeout(() => { if (state.stream === ctl && state.key) stream(); }, 2000);
}

function onEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (event !== 'gpu' || !data.length) return;
  let g;
  try { g = JSON.parse(data.join('\n')); } catch (_) { return; }
  state.gpus.set(g.uuid, g);
  state.liveEvents += 1;
  state.lastEventAt = Date.now();
  document.body.dataset.liveEvents = String(state.liveEvents);
  showError('');
  setLive(true);
  queueRender(g.uuid);
  extendChart(g);
}

// ---- the pipeline's health -------------------------------------------------------------

async function pipeline() {
  if (!state.key) return;
  const rows = [];
  const row = (k, v) => rows.push(h('dt', {}, k), h('dd', {}, v));
  try {
    const r = await fetch('/readyz', { cache: 'no-store' });
    row('backend', r.ok ? 'ready' : `not ready (HTTP ${r.status})`);
  } catch (e) { row('backend', `unreachable (${e.message})`); }
  const gpus = [...state.gpus.values()];
  const stale = gpus.filter((g) => Date.now() - Date.parse(g.last_seen) > STALE_MS).length;
  row('GPUs reporting', `${gpus.length - stale} of ${gpus.length}` + (stale ? ` (${stale} silent for over ${STALE_MS / 1000} s)` : ''));
  row('live updates', state.lastEventAt
    ? `${state.liveEvents} received, the last ${((Date.now() - state.lastEventAt) / 1000).toFixed(0)} s ago`
    : 'none yet');
  try {
    const p = await api('/api/v1/pipeline');
    const n = (v) => v.toLocaleString('en');
    row('records consumed', n(p.records));
    row('samples stored', `${n(p.samples_stored)} (${n(p.samples_unflushed)} not yet on disk)`);
    const rejected = Object.entries(p.rejected);
    row('records rejected', rejected.length
      ? `${rejected.map(([r, c]) => `${r} ${n(c)}`).join(', ')}; ${n(p.dead_lettered)} dead-lettered`
      : 'none');
    const lags = Object.values(p.consumer_lag);
    if (lags.length) row('consumer lag', `${n(lags.reduce((a, b) => a + b, 0))} records (${lags.length} partition${lags.length === 1 ? '' : 's'})`);
    const errors = Object.entries(p.errors).filter(([, c]) => c > 0);
    if (errors.length) row('ingest errors', errors.map(([k, c]) => `${k} ${n(c)}`).join(', '));
    document.body.dataset.pipelineRecords = String(p.records);
  } catch (e) {
    if (e instanceof Unauthorized) { signOut('The API key was refused.'); return; }
    row('ingest', e.message);
  }
  $('#pipeline-facts').replaceChildren(...rows);
  document.body.dataset.pipeline = 'shown';
}

setInterval(pipeline, 5000);
// Fade the tiles of GPUs gone silent, even when nothing else changes.
setInterval(() => {
  const now = Date.now();
  for (const [uuid, el] of state.tiles) {
    const g = state.gpus.get(uuid);
    if (g) el.classList.toggle('stale', now - Date.parse(g.last_seen) > STALE_MS);
  }
}, 5000);
start();
