// BeyondTP web console: plain JavaScript over the JSON HTTP API (POST /api/v1/<verb>), the same
// operations as the NATS request API and the btp command line. Views refresh by polling, so every
// open browser shows the same state within a second.
'use strict';

const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const TOKEN_KEY = 'btp.token';
// `btp standalone` prints the console's URL with its token (`/?token=...`), as Jupyter does:
// keep it in this browser's local storage and take it out of the address bar and history.
const fromUrl = new URLSearchParams(location.search).get('token');
if (fromUrl) {
  localStorage.setItem(TOKEN_KEY, fromUrl.trim());
  history.replaceState(null, '', location.pathname + location.hash);
}
let token = localStorage.getItem(TOKEN_KEY) || '';
let timer = null;
let generation = 0; // bumped on every navigation: refreshes of an old view stop

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function headers() {
  const h = { 'content-type': 'application/json' };
  if (token) h.authorization = `Bearer ${token}`;
  return h;
}

async function post(path, body) {
  const r = await fetch(path, { method: 'POST', headers: headers(), body: JSON.stringify(body) });
  if (r.ok && !(r.headers.get('content-type') || '').startsWith('application/json')) return r;
  let j;
  try {
    j = await r.json();
  } catch {
    throw new ApiError('unavailable', `the server answered ${r.status} without a JSON body`);
  }
  if (j.error) {
    if (j.error.code === 'unauthenticated') showToken(j.error.message);
    throw new ApiError(j.error.code, j.error.message);
  }
  return j.ok;
}

const api = (verb, body = {}) => post(`/api/v1/${verb}`, body);

// ---- formatting -------------------------------------------------------------------------------

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
function bytes(n) {
  let v = Number(n) || 0;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(v < 10 ? 2 : 1) : v} ${UNITS[i]}`;
}
const rate = (n) => `${bytes(n)}/s`;
const num = (n) => Number(n || 0).toLocaleString('en-US');
function duration(s) {
  if (s == null) return '–';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h) return `${h}h ${m}m`;
  return m ? `${m}m ${s % 60}s` : `${s}s`;
}
const ago = (ms) => (ms ? `${duration((Date.now() - ms) / 1000)} ago` : '–');
const when = (ms) => (ms ? new Date(ms).toLocaleString() : '–');
const stateBadge = (s) => `<span class="state state-${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`;

/** Percent done: bytes when the task has any, files otherwise; 100 only once completed. */
function percent(t) {
  if (t.state === 'completed') return 100;
  const [done, all] = t.bytes_found > 0
    ? [t.bytes_copied + t.bytes_skipped + t.bytes_failed, t.bytes_found]
    : [t.files_copied + t.files_skipped + t.files_failed, t.files_found];
  if (!all) return 0;
  return Math.min(99.9, Math.floor((1000 * done) / all) / 10);
}
const bar = (p, big) => `<div class="bar${big ? ' big' : ''}"><span style="width:${p}%"></span></div>`;

/** Shows `message` in an error line, or hides it when empty. */
function say(el, message) {
  el.textContent = message;
  el.hidden = !message;
}

/** Clicks on the `attr` buttons of `table`: confirm, run, show a refusal in #action-error, refresh. */
function onButton(table, attr, question, run, refresh) {
  table.addEventListener('click', async (e) => {
    const b = e.target.closest(`button[${attr}]`);
    const value = b?.getAttribute(attr);
    if (!b || !confirm(question(value))) return;
    try {
      await run(value);
      say($('#action-error'), '');
    } catch (err) {
      say($('#action-error'), err.message);
    }
    await refresh();
  });
}

// ---- navigation -------------------------------------------------------------------------------

function every(ms, fn) {
  const gen = generation;
  const tick = async () => {
    if (gen !== generation) return;
    try {
      await fn();
      const e = $('#live-error');
      if (e) e.hidden = true;
    } catch (err) {
      const e = $('#live-error');
      if (gen === generation && e && err.code !== 'unauthenticated') {
        say(e, `Refresh failed: ${err.message}`);
      }
    }
    if (gen === generation) timer = setTimeout(tick, ms);
  };
  return tick();
}

function route() {
  generation++;
  clearTimeout(timer);
  const [, page, arg] = (location.hash || '#/tasks').split('/');
  document.querySelectorAll('[data-nav]').forEach((a) => {
    const nav = { task: 'tasks', schedule: 'schedules' }[page] || page;
    a.classList.toggle('active', a.dataset.nav === nav);
  });
  $('#signout').hidden = !token;
  if (page === 'task' && arg) taskView(decodeURIComponent(arg));
  else if (page === 'schedule' && arg) scheduleView(decodeURIComponent(arg));
  else if (page === 'schedules') schedulesView();
  else if (page === 'clients') clientsView();
  else if (page === 'endpoints') endpointsView();
  else tasksView();
}

function showToken(message) {
  generation++;
  clearTimeout(timer);
  $('#view').innerHTML = `
    <h1>API token</h1>
    <form id="token-form" class="card">
      <p>${esc(message || 'This server requires an API token.')}</p>
      <p class="muted">Ask your administrator for a token (<code>btp token create TENANT</code>), or open the
      console's URL that <code>btp standalone</code> printed (<code>/?token=...</code>). It is kept in this
      browser only and sent with every request.</p>
      <div class="row"><input name="token" type="password" autocomplete="off" size="48" required>
      <button class="primary">Use token</button></div>
    </form>`;
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = new FormData(e.target).get('token').trim();
    localStorage.setItem(TOKEN_KEY, token);
    header();
    route();
  });
}

async function header() {
  try {
    const h = await api('server.health');
    $('#server').textContent = `v${h.version} · ${h.database} · ${h.clients_online} client(s) online`;
  } catch (e) {
    $('#server').textContent = e.code === 'unauthenticated' ? 'token needed' : `server: ${e.message}`;
  }
}

// ---- tasks ------------------------------------------------------------------------------------

const ACTIONS = {
  created: ['start', 'delete'],
  running: ['pause', 'cancel'],
  paused: ['resume', 'cancel'],
  completed: ['retry', 'delete'],
  failed: ['retry', 'delete'],
  cancelled: ['delete'],
};

function actionButtons(t) {
  return (ACTIONS[t.state] || [])
    .filter((a) => a !== 'retry' || t.files_failed > 0)
    .map((a) => `<button data-act="${a}" data-id="${esc(t.id)}"${a === 'delete' || a === 'cancel' ? ' class="danger"' : ''}>${a[0].toUpperCase() + a.slice(1)}</button>`)
    .join('');
}

/** Runs a task action from a button; errors appear in `out`. */
async function act(button, out, after) {
  const { act: verb, id } = button.dataset;
  if ((verb === 'delete' || verb === 'cancel') && !confirm(`${verb} task ${id}?`)) return;
  button.disabled = true;
  try {
    await api(`task.${verb}`, { id });
    say(out, '');
    if (verb === 'delete' && location.hash.startsWith('#/task/')) location.hash = '#/tasks';
  } catch (e) {
    say(out, `${verb} ${id}: ${e.message}`);
  }
  await after();
}

/** Lines of KEY=VALUE, as the command line's --src-opt takes them. */
function options(text, what) {
  const out = {};
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf('=');
    if (at < 0) throw new ApiError('invalid_argument', `${what}: expected KEY=VALUE, got '${line}'`);
    out[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return out;
}

const globs = (text) => text.split(/[\n,]/).map((g) => g.trim()).filter(Boolean);

function createRequest(form) {
  const f = new FormData(form);
  const v = (k) => String(f.get(k) || '').trim();
  const opts = { verify: v('verify'), mode: v('mode'), compare: v('compare'), dry_run: f.get('dry_run') === 'on' };
  if (v('speed_limit')) opts.speed_limit = v('speed_limit');
  const filter = { include: globs(v('include')), exclude: globs(v('exclude')) };
  if (v('min_size')) filter.min_size = v('min_size');
  if (v('max_size')) filter.max_size = v('max_size');
  opts.filter = filter;
  return {
    src: v('src'),
    dst: v('dst'),
    src_options: options(v('src_options'), 'source options'),
    dst_options: options(v('dst_options'), 'destination options'),
    options: opts,
    start: f.get('start') === 'on',
  };
}

const CREATE_FORM = `
  <details class="card" id="new-task"><summary><b>New task</b></summary>
  <form id="create" class="grid" autocomplete="off">
    <label class="wide">Source <input name="src" required placeholder="/data/in, s3://bucket/prefix, webdav://host/dir or ENDPOINT:/path"></label>
    <label class="wide">Destination <input name="dst" required placeholder="/data/out, s3://bucket/prefix or ENDPOINT:/path"></label>
    <label>Source options (KEY=VALUE per line) <textarea name="src_options" placeholder="endpoint=http://127.0.0.1:9000"></textarea></label>
    <label>Destination options <textarea name="dst_options"></textarea></label>
    <label>Speed limit <input name="speed_limit" placeholder="unlimited, e.g. 50MiB/s or 08:00,20MiB/s 18:00,off"></label>
    <label>Verify <select name="verify"><option>size</option><option>checksum</option></select></label>
    <label>Mode <select name="mode"><option>copy</option><option>sync</option></select></label>
    <label>Skip files already there by <select name="compare"><option>size-mtime</option><option>checksum</option><option>none</option></select></label>
    <label>Include globs (comma-separated) <input name="include" placeholder="*.csv, logs/**"></label>
    <label>Exclude globs <input name="exclude"></label>
    <label>Min size <input name="min_size" placeholder="e.g. 1KiB"></label>
    <label>Max size <input name="max_size" placeholder="e.g. 10GiB"></label>
    <label class="check"><input type="checkbox" name="dry_run"> Dry run (change nothing)</label>
    <label class="check"><input type="checkbox" name="start"> Start now</label>
    <div class="wide row"><button class="primary" id="create-submit">Create task</button></div>
    <div class="wide error" id="create-error" role="alert" hidden></div>
  </form></details>`;

async function tasksView() {
  const view = $('#view');
  view.innerHTML = `
    <h1>Tasks</h1>${CREATE_FORM}
    <div class="row">
      <label class="check">State <select id="state-filter"><option value="">any</option>
        ${Object.keys(ACTIONS).map((s) => `<option>${s}</option>`).join('')}</select></label>
      <span id="task-count" class="muted"></span>
    </div>
    <p class="error" id="live-error" hidden></p>
    <p class="error" id="action-error" role="alert" hidden></p>
    <table id="tasks"><thead><tr><th>Task</th><th>State</th><th>Progress</th><th class="num">Files</th>
      <th class="num">Copied</th><th class="num">Speed</th><th>Source → destination</th><th></th></tr></thead>
      <tbody></tbody></table>`;
  const form = $('#create');
  const out = $('#create-error');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const button = $('#create-submit');
    button.disabled = true;
    try {
      const t = await api('task.create', createRequest(form));
      location.hash = `#/task/${encodeURIComponent(t.id)}`;
    } catch (err) {
      say(out, err.message);
    } finally {
      button.disabled = false;
    }
  });
  const refresh = () => loadTasks();
  $('#state-filter').addEventListener('change', refresh);
  $('#tasks').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    if (b) act(b, $('#action-error'), refresh);
  });
  await every(2000, refresh);
}

async function loadTasks() {
  const began = performance.now();
  const state = $('#state-filter').value || null;
  const { tasks } = await api('task.list', { state, limit: 1000 });
  const rows = tasks.map((t) => {
    const p = percent(t);
    return `<tr data-task="${esc(t.id)}">
      <td><a href="#/task/${encodeURIComponent(t.id)}"><code>${esc(t.id.slice(0, 8))}</code></a></td>
      <td>${stateBadge(t.state)}</td>
      <td title="${p}%">${bar(p)}</td>
      <td class="num">${num(t.files_copied + t.files_skipped)} / ${num(t.files_found)}${t.files_failed ? ` <span class="state state-failed">${num(t.files_failed)} failed</span>` : ''}</td>
      <td class="num">${bytes(t.bytes_copied)}</td>
      <td class="num">${t.state === 'running' ? rate(t.current_bytes_per_sec) : '–'}</td>
      <td class="path" title="${esc(t.src)} → ${esc(t.dst)}">${esc(t.src)} → ${esc(t.dst)}</td>
      <td>${actionButtons(t)}</td></tr>`;
  });
  const body = $('#tasks tbody');
  if (!body) return;
  body.innerHTML = rows.join('') || '<tr><td colspan="8" class="muted">No tasks yet: create one above.</td></tr>';
  $('#task-count').textContent = `${tasks.length} task(s)${tasks.length === 1000 ? ' (newest 1,000)' : ''}`;
  // For the browser test: fetch + render, and when the list was first shown since page load.
  document.body.dataset.taskListMs = String(Math.round(performance.now() - began));
  document.body.dataset.taskListAt ||= String(Math.round(performance.now()));
}

// ---- task detail ------------------------------------------------------------------------------

function chart(samples) {
  const w = 800;
  const h = 160;
  if (samples.length < 2) return `<svg class="chart" viewBox="0 0 ${w} ${h}"><text x="10" y="20">Speed appears here while the task runs.</text></svg>`;
  const t0 = samples[0].t;
  const span = Math.max(1, samples[samples.length - 1].t - t0);
  const max = Math.max(1, ...samples.map((s) => s.v));
  const pts = samples.map((s) => `${((s.t - t0) / span) * (w - 20) + 10},${h - 20 - (s.v / max) * (h - 40)}`).join(' ');
  return `<svg class="chart" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none"><polyline points="${pts}"/>
    <text x="10" y="14">${esc(rate(max))}</text><text x="10" y="${h - 5}">${esc(duration(span / 1000))} shown</text></svg>`;
}

function stat(label, value, key) {
  return `<div><b data-stat="${key}">${esc(value)}</b><span>${esc(label)}</span></div>`;
}

async function taskView(id) {
  const view = $('#view');
  view.innerHTML = `
    <p><a href="#/tasks">← Tasks</a></p>
    <h1>Task <code>${esc(id)}</code> <span id="task-state"></span></h1>
    <p class="muted" id="task-route"></p>
    <div class="row" id="task-actions"></div>
    <p class="error" id="action-error" role="alert" hidden></p>
    <p class="error" id="live-error" hidden></p>
    <div class="card"><div class="row">${bar(0, true)}<b id="task-percent"></b></div></div>
    <div class="stats" id="task-stats"></div>
    <h2>Speed</h2><div id="task-chart"></div>
    <h2>Speed limit</h2>
    <form id="limit-form" class="row"><input name="limit" placeholder="e.g. 50MiB/s or 08:00,20MiB/s 18:00,off; empty: unlimited">
      <button>Set</button><span id="limit-now" class="muted"></span></form>
    <p class="error" id="limit-error" role="alert" hidden></p>
    <h2>Report</h2>
    <div class="row"><button id="csv">Download CSV (every file)</button><button id="json">Download JSON</button></div>
    <table id="deliveries" hidden><thead><tr><th>When the task ends</th><th>To</th><th>State</th><th class="num">Attempts</th><th>Last error</th></tr></thead><tbody></tbody></table>
    <p class="error" id="report-error" role="alert" hidden></p>
    <h2>Failed files <span id="failed-count" class="muted"></span></h2>
    <table id="failures"><thead><tr><th>Path</th><th class="num">Size</th><th class="num">Attempts</th><th>Reason</th></tr></thead><tbody></tbody></table>`;
  const samples = [];
  let failedShown = -1;
  const refresh = async () => {
    const t = await api('task.get', { id });
    if (!$('#task-stats')) return;
    const p = percent(t);
    $('#task-state').innerHTML = stateBadge(t.state);
    $('#task-route').textContent = `${t.src} → ${t.dst}`;
    $('#task-actions').innerHTML = actionButtons(t);
    $('.bar.big span').style.width = `${p}%`;
    $('#task-percent').textContent = `${p}%${t.listing_done ? '' : ' (still listing)'}`;
    const elapsed = t.started_ms ? ((t.finished_ms || Date.now()) - t.started_ms) / 1000 : null;
    $('#task-stats').innerHTML = [
      stat('files found', num(t.files_found), 'files_found'),
      stat('files copied', num(t.files_copied), 'files_copied'),
      stat('already there', num(t.files_skipped), 'files_skipped'),
      stat('files failed', num(t.files_failed), 'files_failed'),
      stat('excluded', num(t.files_excluded), 'files_excluded'),
      stat('deleted (sync)', num(t.files_deleted), 'files_deleted'),
      stat('retried', num(t.files_retried), 'files_retried'),
      stat('copied', `${bytes(t.bytes_copied)} of ${bytes(t.bytes_found)}`, 'bytes_copied'),
      stat('speed now', t.state === 'running' ? rate(t.current_bytes_per_sec) : '–', 'speed'),
      stat('peak speed', rate(t.peak_bytes_per_sec), 'peak'),
      stat('time left', t.state === 'running' ? duration(t.eta_secs) : '–', 'eta'),
      stat('elapsed', duration(elapsed), 'elapsed'),
      stat('jobs', `${num(t.jobs_done)} / ${num(t.jobs_total)}`, 'jobs'),
    ].join('');
    const limit = t.options.speed_limit;
    // A timetable (text) shows the rate in force and its next change; times are UTC.
    const now = t.speed_limit_now;
    const inForce = (n) => (n == null ? 'unlimited' : rate(n));
    let limitText = limit == null ? 'now unlimited'
      : `now ${inForce(now ? now.bytes_per_sec : (typeof limit === 'number' ? limit : null))}`;
    if (typeof limit === 'string') {
      limitText += ` · timetable ${limit} (UTC)`;
      if (now && now.next_change) {
        const at = new Date(now.next_change.at_ms).toISOString().slice(0, 19).replace('T', ' ');
        limitText += ` · ${inForce(now.next_change.bytes_per_sec)} from ${at} UTC`;
      }
    }
    $('#limit-now').textContent = limitText;
    // The report export (--report-to) and the notification (--notify), once the task ends.
    const deliveries = [['report export', 'report_export', t.report_export], ['notification', 'notification', t.notification]]
      .filter(([, , d]) => d);
    $('#deliveries').hidden = deliveries.length === 0;
    $('#deliveries tbody').innerHTML = deliveries.map(([what, key, d]) => `<tr data-delivery="${key}">
      <td>${esc(what)}${d.level ? ` (${esc(d.level)})` : ''}</td><td class="path">${esc(d.to)}</td>
      <td>${stateBadge(d.state)}</td><td class="num">${d.attempts}</td>
      <td>${esc(d.reason || '')}${d.next_attempt_ms ? ` · next attempt ${esc(new Date(d.next_attempt_ms).toLocaleTimeString())}` : ''}</td></tr>`).join('');
    if (t.state === 'running') {
      samples.push({ t: Date.now(), v: t.current_bytes_per_sec });
      if (samples.length > 600) samples.shift();
    }
    $('#task-chart').innerHTML = chart(samples);
    if (t.files_failed !== failedShown) {
      const r = await api('task.report', { id, failures_limit: 100 });
      failedShown = t.files_failed;
      $('#failed-count').textContent = t.files_failed ? `(${num(t.files_failed)}${t.files_failed > 100 ? ', first 100 shown' : ''})` : '';
      $('#failures tbody').innerHTML = r.failures.map((f) => `<tr><td class="path" title="${esc(f.path)}">${esc(f.path)}</td>
        <td class="num">${bytes(f.size)}</td><td class="num">${f.attempts}</td><td>${esc(f.reason)}</td></tr>`).join('')
        || '<tr><td colspan="4" class="muted">None.</td></tr>';
    }
  };
  $('#task-actions').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    if (b) act(b, $('#action-error'), refresh);
  });
  $('#limit-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = new FormData(e.target).get('limit').trim();
    const out = $('#limit-error');
    try {
      await api('task.set', { id, speed_limit: text || null });
      say(out, '');
      await refresh();
    } catch (err) {
      say(out, err.message);
    }
  });
  const report = async (kind) => {
    const out = $('#report-error');
    try {
      let blob;
      if (kind === 'csv') {
        blob = await (await post('/api/v1/task.report.csv', { id })).blob();
      } else {
        const r = await api('task.report', { id, failures_limit: 10000 });
        blob = new Blob([JSON.stringify(r, null, 2)], { type: 'application/json' });
      }
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = `btp-report-${id}.${kind}`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 60000);
      say(out, '');
    } catch (err) {
      say(out, `report: ${err.message}`);
    }
  };
  $('#csv').addEventListener('click', () => report('csv'));
  $('#json').addEventListener('click', () => report('json'));
  await every(1000, refresh);
}

// ---- schedules --------------------------------------------------------------------------------

const firing = (s) => (s.cron ? `cron ${s.cron} (${s.timezone})` : `every ${duration(s.every_secs)}`);

async function schedulesView() {
  $('#view').innerHTML = `
    <h1>Schedules</h1>
    <p class="muted">A schedule creates and starts a task from its template at each firing (<code>btp schedule create</code>); a run is skipped while the previous one is still going.</p>
    <p class="error" id="live-error" hidden></p><p class="error" id="action-error" role="alert" hidden></p>
    <table id="schedules"><thead><tr><th>Name</th><th>Fires</th><th>State</th><th>Next firing</th><th class="num">Runs</th>
      <th>Last task</th><th>Source → destination</th><th></th></tr></thead><tbody></tbody></table>`;
  const refresh = async () => {
    const { schedules } = await api('schedule.list');
    const body = $('#schedules tbody');
    if (!body) return;
    body.innerHTML = schedules.map((s) => `<tr data-schedule="${esc(s.name)}">
      <td><a href="#/schedule/${encodeURIComponent(s.name)}"><b>${esc(s.name)}</b></a></td><td>${esc(firing(s))}</td>
      <td>${stateBadge(s.state)}${s.paused_reason ? ` <span class="muted">${esc(s.paused_reason)}</span>` : ''}</td>
      <td data-next>${s.state === 'active' ? esc(when(s.next_fire_ms)) : '–'}</td><td class="num">${num(s.runs)}</td>
      <td>${s.last_task ? `<a href="#/task/${encodeURIComponent(s.last_task)}"><code>${esc(s.last_task.slice(0, 8))}</code></a>` : '–'}</td>
      <td class="path">${esc(s.src)} → ${esc(s.dst)}</td>
      <td>${s.state === 'active' ? `<button data-pause="${esc(s.name)}">Pause</button>` : `<button data-resume="${esc(s.name)}">Resume</button>`}</td></tr>`).join('')
      || '<tr><td colspan="8" class="muted">No schedules yet: <code>btp schedule create NAME --every 6h --src ... --dst ...</code></td></tr>';
  };
  onButton($('#schedules'), 'data-pause', (name) => `Pause schedule ${name}?`, (name) => api('schedule.pause', { name }), refresh);
  onButton($('#schedules'), 'data-resume', (name) => `Resume schedule ${name}?`, (name) => api('schedule.resume', { name }), refresh);
  await every(2000, refresh);
}

async function scheduleView(name) {
  $('#view').innerHTML = `
    <p><a href="#/schedules">← Schedules</a></p>
    <h1>Schedule <code>${esc(name)}</code> <span id="schedule-state"></span></h1>
    <p class="muted" id="schedule-route"></p>
    <p class="error" id="live-error" hidden></p>
    <div class="stats" id="schedule-stats"></div>
    <h2>Runs</h2>
    <table id="runs"><thead><tr><th class="num">Run</th><th>Fired</th><th>Outcome</th><th>Task</th><th class="num">Files copied</th>
      <th class="num">Bytes copied</th><th class="num">Skipped</th><th class="num">Failed</th><th>Duration</th><th>Reason</th></tr></thead><tbody></tbody></table>`;
  const refresh = async () => {
    const s = await api('schedule.get', { name });
    const { runs } = await api('schedule.runs', { name, limit: 100 });
    if (!$('#runs')) return;
    $('#schedule-state').innerHTML = stateBadge(s.state);
    $('#schedule-route').textContent = `${s.src} → ${s.dst} · ${firing(s)}${s.paused_reason ? ` · ${s.paused_reason}` : ''}`;
    $('#schedule-stats').innerHTML = [
      stat('next firing', s.state === 'active' ? when(s.next_fire_ms) : '–', 'next_fire'),
      stat('runs', num(s.runs), 'runs'),
      stat('failed in a row', `${s.failures} of ${s.max_failures}`, 'failures'),
      stat('created', when(s.created_ms), 'created'),
    ].join('');
    $('#runs tbody').innerHTML = runs.map((r) => `<tr data-run="${r.seq}"><td class="num">${r.seq}</td><td>${esc(when(r.fire_ms))}</td>
      <td>${stateBadge(r.outcome)}</td>
      <td>${r.task ? `<a href="#/task/${encodeURIComponent(r.task)}"><code>${esc(r.task.slice(0, 8))}</code></a>` : '–'}</td>
      <td class="num">${num(r.files_copied)}</td><td class="num">${bytes(r.bytes_copied)}</td><td class="num">${num(r.files_skipped)}</td>
      <td class="num">${num(r.files_failed)}</td><td>${r.task ? esc(duration(r.duration_ms / 1000)) : '–'}</td>
      <td>${esc(r.reason || '')}</td></tr>`).join('') || '<tr><td colspan="10" class="muted">No run yet.</td></tr>';
  };
  await every(2000, refresh);
}

// ---- clients ----------------------------------------------------------------------------------

async function clientsView() {
  $('#view').innerHTML = `
    <h1>Clients</h1>
    <p class="muted">Clients run near the data and execute jobs. A drained client takes no new jobs and finishes the ones it has.</p>
    <p class="error" id="live-error" hidden></p><p class="error" id="action-error" role="alert" hidden></p>
    <table id="clients"><thead><tr><th>Client</th><th>Host</th><th>Tenant</th><th class="num">Workers</th>
      <th class="num">Current jobs</th><th class="num">Jobs done</th><th class="num">Speed</th><th>Last heartbeat</th><th>Status</th><th></th></tr></thead>
      <tbody></tbody></table>`;
  const refresh = async () => {
    const { clients } = await api('client.list');
    const body = $('#clients tbody');
    if (!body) return;
    body.innerHTML = clients.map((c) => {
      const status = !c.online ? 'offline' : c.draining ? 'draining' : 'online';
      return `<tr data-client="${esc(c.id)}"><td><code>${esc(c.id)}</code></td><td>${esc(c.host)}</td><td>${esc(c.tenant)}</td>
        <td class="num">${c.workers}</td><td class="num">${c.busy}</td><td class="num">${num(c.jobs_done)}</td>
        <td class="num">${rate(c.bytes_per_sec)}</td><td>${ago(c.last_seen_ms)}</td><td>${stateBadge(status)}</td>
        <td>${status === 'online' ? `<button data-drain="${esc(c.id)}">Drain</button>` : ''}</td></tr>`;
    }).join('') || '<tr><td colspan="10" class="muted">No client has registered.</td></tr>';
  };
  onButton($('#clients'), 'data-drain', (id) => `Drain client ${id}? It takes no new jobs.`,
    (id) => api('client.drain', { id }), refresh);
  await every(2000, refresh);
}

// ---- endpoints --------------------------------------------------------------------------------

const optionRow = () => `<div class="kv"><input name="key" placeholder="key, e.g. secret_access_key">
  <input name="value" type="password" autocomplete="new-password" placeholder="value (never shown again)">
  <button type="button" data-remove>Remove</button></div>`;

async function endpointsView() {
  $('#view').innerHTML = `
    <h1>Endpoints</h1>
    <p class="muted">A named source or destination with its credentials, used by tasks as <code>NAME:/path</code>.
      Option values are sealed on the server and never sent back to a browser.</p>
    <form id="endpoint-form" class="card grid" autocomplete="off">
      <label>Name <input name="name" required placeholder="lowercase, e.g. archive"></label>
      <label class="wide">URL <input name="url" required placeholder="s3://bucket/prefix, /data or webdav://host/dir"></label>
      <div class="wide"><div class="muted">Options</div><div id="option-rows">${optionRow()}</div>
        <button type="button" id="add-option">Add option</button></div>
      <div class="wide row"><button class="primary">Create endpoint</button></div>
      <div class="wide error" id="endpoint-error" role="alert" hidden></div>
    </form>
    <p class="error" id="live-error" hidden></p><p class="error" id="action-error" role="alert" hidden></p>
    <table id="endpoints"><thead><tr><th>Name</th><th>URL</th><th>Options set</th><th>Created</th><th></th></tr></thead><tbody></tbody></table>`;
  const form = $('#endpoint-form');
  $('#add-option').addEventListener('click', () => $('#option-rows').insertAdjacentHTML('beforeend', optionRow()));
  $('#option-rows').addEventListener('click', (e) => {
    if (e.target.matches('[data-remove]')) e.target.parentElement.remove();
  });
  const refresh = async () => {
    const { endpoints } = await api('endpoint.list');
    const body = $('#endpoints tbody');
    if (!body) return;
    body.innerHTML = endpoints.map((p) => `<tr data-endpoint="${esc(p.name)}"><td><b>${esc(p.name)}</b></td>
      <td class="path">${esc(p.url)}</td><td>${esc(p.option_keys.join(', ')) || '–'}</td><td>${when(p.created_ms)}</td>
      <td><button class="danger" data-delete="${esc(p.name)}">Delete</button></td></tr>`).join('')
      || '<tr><td colspan="5" class="muted">No endpoints yet.</td></tr>';
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const out = $('#endpoint-error');
    const f = new FormData(form);
    const keys = f.getAll('key');
    const values = f.getAll('value');
    const opts = {};
    keys.forEach((k, i) => {
      if (String(k).trim()) opts[String(k).trim()] = String(values[i]);
    });
    try {
      await api('endpoint.create', { name: String(f.get('name')).trim(), url: String(f.get('url')).trim(), options: opts });
      form.reset();
      $('#option-rows').innerHTML = optionRow();
      say(out, '');
    } catch (err) {
      say(out, err.message);
    }
    await refresh();
  });
  onButton($('#endpoints'), 'data-delete', (name) => `Delete endpoint ${name}?`,
    (name) => api('endpoint.delete', { name }), refresh);
  await every(5000, refresh);
}

// ---- start ------------------------------------------------------------------------------------

$('#signout').addEventListener('click', () => {
  token = '';
  localStorage.removeItem(TOKEN_KEY);
  route();
  header();
});
window.addEventListener('hashchange', route);
header();
route();
