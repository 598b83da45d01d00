// Browser test of the web console: a real `btp standalone` (nats-server, server, client) and
// headless Chromium driven through playwright-core.
//
//   BTP=target/debug/btp node tests/browser/console.test.mjs
//
// Environment: BTP (the binary), CHROMIUM (default /usr/bin/chromium), BTP_ARTIFACTS (where
// screenshots and the downloaded report go; default target/browser-artifacts).
import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';

const BTP = path.resolve(process.env.BTP || 'target/debug/btp');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(process.env.BTP_ARTIFACTS || 'target/browser-artifacts');
const SECRET = `console-secret-${process.pid}-Zq8`;
const TIMEOUT = 60_000;

fs.mkdirSync(ARTIFACTS, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'btp-console-'));
const log = (...a) => console.log('[console test]', ...a);
const results = [];

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** A tree with nested directories, odd names and one larger file (so a limited task runs a while). */
function makeTree(root) {
  const files = [];
  const put = (rel, size) => {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    const buf = Buffer.alloc(size);
    for (let i = 0; i + 4 <= size; i += 4096) buf.writeUInt32LE((i * 2654435761 + size) >>> 0, i);
    fs.writeFileSync(p, buf);
    files.push([rel, size]);
  };
  // One listing per directory, so one copy job at least per directory: a paused task keeps
  // jobs that have not run.
  for (let d = 0; d < 30; d++) {
    put(`dir ${d}/large-${d}.bin`, (400 << 10) + d * 4099);
    for (let f = 0; f < 4; f++) put(`dir ${d}/sub, "quoted"/file-${f}.bin`, 1000 + d * 997 + f * 131);
  }
  put('empty', 0);
  return files;
}

function walk(root, rel = '') {
  const out = [];
  for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...walk(root, r));
    else out.push([r, fs.statSync(path.join(root, r)).size]);
  }
  return out;
}

/** RFC 4180 CSV into rows of fields. */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') { row.push(field); field = ''; }
    else if (c === '\n') { row.push(field); rows.push(row); row = []; field = ''; }
    else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

async function startStandalone(port) {
  const data = path.join(tmp, 'data');
  const child = spawn(BTP, ['standalone', '--data-dir', data, '--http-addr', `127.0.0.1:${port}`, '--workers', '4'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const deadline = Date.now() + 30_000;
  while (!/Console: \S+\n/.test(out)) {
    if (child.exitCode !== null) throw new Error(`standalone exited ${child.exitCode}: ${err}`);
    if (Date.now() > deadline) throw new Error(`standalone did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  // Like Jupyter: the console's URL carries a token made for this run.
  const consoleUrl = out.match(/Console: (\S+)\n/)[1];
  const token = new URL(consoleUrl).searchParams.get('token');
  assert.ok(token, `no token in ${consoleUrl}`);
  return { child, consoleUrl, token, logs: () => out + err };
}

/** A call of the API as a program makes it: JSON, with the token (when given). */
async function call(base, verb, body, token = standaloneToken) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${base}/api/v1/${verb}`, { method: 'POST', headers, body: JSON.stringify(body ?? {}) });
  const j = await r.json();
  if (j.error) throw new Error(`${verb}: ${j.error.message}`);
  return j.ok;
}

async function step(name, fn) {
  const began = Date.now();
  await fn();
  results.push(`ok   ${name} (${Date.now() - began} ms)`);
  log(`ok: ${name}`);
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const srcRoot = path.join(tmp, 'source');
const dstRoot = path.join(tmp, 'destination');
const tree = makeTree(srcRoot);
const { child, consoleUrl, token: standaloneToken, logs } = await startStandalone(port);
const launch = () => chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
const browserA = await launch();
const browserB = await launch();
let failed = false;
const extra = []; // processes of the secured server
const extraBrowsers = [];
try {
  const a = await browserA.newPage();
  a.setDefaultTimeout(TIMEOUT);
  a.on('dialog', (d) => d.accept());
  let firstLoad = 0;
  a.on('requestfinished', async (req) => {
    const s = await req.sizes().catch(() => null);
    if (s) firstLoad += s.responseBodySize + s.responseHeadersSize;
  });

  await step('without its token the console asks for one and shows no task', async () => {
    await a.goto(base);
    await a.locator('#token-form').waitFor();
    assert.equal(await a.locator('#tasks').count(), 0, 'the tasks were shown without the token');
  });

  await step('first load of the console from its URL with the token is under 500 KB', async () => {
    firstLoad = 0;
    await a.goto(consoleUrl, { waitUntil: 'networkidle' });
    await a.locator('#tasks tbody tr').first().waitFor();
    assert.ok(!a.url().includes('token='), `the token stayed in the address bar: ${a.url()}`);
    log(`first load: ${firstLoad} bytes`);
    results.push(`     first load transferred ${firstLoad} bytes`);
    assert.ok(firstLoad > 0 && firstLoad < 500 * 1024, `first load was ${firstLoad} bytes`);
    await a.screenshot({ path: path.join(ARTIFACTS, '01-tasks-empty.png'), fullPage: true });
  });

  await step('an endpoint is created through the form; its secret never comes back', async () => {
    await a.goto(`${base}/#/endpoints`);
    await a.fill('#endpoint-form [name=name]', 'archive');
    await a.fill('#endpoint-form [name=url]', 's3://archive-bucket/backups');
    await a.fill('#option-rows [name=key]', 'secret_access_key');
    await a.fill('#option-rows [name=value]', SECRET);
    await a.click('#endpoint-form button.primary');
    await a.locator('tr[data-endpoint=archive]').waitFor();
    await a.fill('#endpoint-form [name=name]', 'local');
    await a.fill('#endpoint-form [name=url]', srcRoot);
    await a.click('#endpoint-form button.primary');
    await a.locator('tr[data-endpoint=local]').waitFor();
    const row = await a.locator('tr[data-endpoint=archive]').innerText();
    assert.match(row, /secret_access_key/);
    const html = await a.content();
    assert.ok(!html.includes(SECRET), 'the secret is in the page');
    const listed = JSON.stringify(await call(base, 'endpoint.list'));
    assert.ok(!listed.includes(SECRET), 'the secret is in endpoint.list');
    await a.screenshot({ path: path.join(ARTIFACTS, '02-endpoints.png'), fullPage: true });
  });

  const openForm = async () => {
    await a.goto(`${base}/#/tasks`);
    await a.locator('#new-task summary').click();
  };
  await step('a bad URL and a bad rate show the validation error and create nothing', async () => {
    await openForm();
    await a.fill('#create [name=src]', 'ftp://example.com/data');
    await a.fill('#create [name=dst]', dstRoot);
    await a.click('#create-submit');
    await a.locator('#create-error', { hasText: "unsupported endpoint scheme 'ftp'" }).waitFor();
    await a.fill('#create [name=src]', 'local:/');
    await a.fill('#create [name=speed_limit]', 'fast');
    await a.click('#create-submit');
    await a.locator('#create-error', { hasText: "invalid rate 'fast'" }).waitFor();
    await a.screenshot({ path: path.join(ARTIFACTS, '03-validation.png'), fullPage: true });
    const { tasks } = await call(base, 'task.list');
    assert.equal(tasks.length, 0, 'a refused form created a task');
    assert.ok(!fs.existsSync(dstRoot), 'a refused form created the destination');
  });

  let id;
  await step('a task created through the form starts and shows live progress', async () => {
    await a.fill('#create [name=speed_limit]', '1MiB/s');
    await a.click('#create-submit');
    await a.waitForURL(/#\/task\//);
    id = decodeURIComponent(a.url().split('#/task/')[1]);
    await a.locator('#task-state [data-state=created]').waitFor();
    await a.click('#task-actions button[data-act=start]');
    await a.locator('#task-state [data-state=running]').waitFor();
  });

  const b = await browserB.newPage();
  b.setDefaultTimeout(TIMEOUT);
  await step('two browsers follow the task; pause in one shows paused in the other', async () => {
    await b.goto(`${consoleUrl}#/task/${id}`);
    await b.locator('#task-state [data-state=running]').waitFor();
    await a.click('#task-actions button[data-act=pause]');
    await a.locator('#task-state [data-state=paused]').waitFor();
    await b.locator('#task-state [data-state=paused]').waitFor();
    await b.screenshot({ path: path.join(ARTIFACTS, '04-paused-in-second-browser.png'), fullPage: true });
    const pausedAt = await b.locator('[data-stat=bytes_copied]').innerText();
    await b.click('#task-actions button[data-act=resume]');
    await a.locator('#task-state [data-state=running]').waitFor();
    // Progress moves on in both without a reload.
    for (const p of [a, b]) {
      await p.waitForFunction((before) => document.querySelector('[data-stat=bytes_copied]')?.innerText !== before, pausedAt);
    }
    // Lift the limit from the console so the rest runs at full speed.
    await b.fill('#limit-form [name=limit]', '');
    await b.click('#limit-form button');
    await b.locator('#limit-now', { hasText: 'unlimited' }).waitFor();
  });

  await step('progress reaches 100% and the state completed in both browsers', async () => {
    for (const p of [a, b]) {
      await p.locator('#task-state [data-state=completed]').waitFor();
      await p.locator('#task-percent', { hasText: '100%' }).waitFor();
    }
    assert.equal(await a.locator('[data-stat=files_copied]').innerText(), String(tree.length));
    assert.equal(await a.locator('[data-stat=files_failed]').innerText(), '0');
    await a.screenshot({ path: path.join(ARTIFACTS, '05-completed.png'), fullPage: true });
  });

  await step('the CSV report lists every copied file, matching the trees byte for byte', async () => {
    const [download] = await Promise.all([a.waitForEvent('download'), a.click('#csv')]);
    const file = path.join(ARTIFACTS, `report-${id}.csv`);
    await download.saveAs(file);
    const rows = parseCsv(fs.readFileSync(file, 'utf8'));
    assert.deepEqual(rows[0], ['path', 'size', 'status', 'attempts', 'reason', 'not_kept']);
    const listed = rows.slice(1).map(([p, size, status, , , notKept]) => {
      assert.equal(status, 'copied');
      assert.equal(notKept, '', `${p}: a file-system copy lost metadata`);
      return `${p}\t${size}`;
    }).sort();
    const src = walk(srcRoot).map(([p, s]) => `${p}\t${s}`).sort();
    const dst = walk(dstRoot).map(([p, s]) => `${p}\t${s}`).sort();
    assert.deepEqual(listed, src, 'the CSV does not list the source tree');
    assert.deepEqual(dst, src, 'the destination tree differs from the source');
    for (const [p] of walk(srcRoot)) {
      assert.ok(fs.readFileSync(path.join(srcRoot, p)).equals(fs.readFileSync(path.join(dstRoot, p))), `${p} differs`);
    }
    const [json] = await Promise.all([a.waitForEvent('download'), a.click('#json')]);
    const report = JSON.parse(fs.readFileSync(await json.path(), 'utf8'));
    assert.equal(report.task.id, id);
    assert.equal(report.task.state, 'completed');
  });

  await step('the clients page shows the client, online, with its workers', async () => {
    await a.goto(`${base}/#/clients`);
    const row = a.locator('#clients tbody tr[data-client]').first();
    await row.locator('[data-state=online]').waitFor();
    assert.match(await row.innerText(), /\b4\b/);
    await a.screenshot({ path: path.join(ARTIFACTS, '06-clients.png'), fullPage: true });
  });

  await step('a list of 1,000 tasks renders in under a second', async () => {
    const batch = [];
    for (let i = 0; i < 999; i++) batch.push(call(base, 'task.create', { src: srcRoot, dst: path.join(tmp, `out-${i}`) }));
    await Promise.all(batch);
    // A fresh load of the console on the task list: the page's own clock, from navigation start
    // to the 1,000 rows in the document.
    await a.goto(`${base}/#/tasks`);
    await a.reload();
    await a.waitForFunction(() => document.querySelectorAll('#tasks tbody tr[data-task]').length === 1000);
    const [at, fetchRender] = await a.evaluate(() => [document.body.dataset.taskListAt, document.body.dataset.taskListMs].map(Number));
    log(`1,000 tasks: rendered ${at} ms after navigation start (${fetchRender} ms fetch + render)`);
    results.push(`     1,000-task list: rendered ${at} ms after navigation start, ${fetchRender} ms fetch + render`);
    assert.ok(at > 0 && at < 1000, `the 1,000-task list took ${at} ms`);
    await a.screenshot({ path: path.join(ARTIFACTS, '07-1000-tasks.png') });
  });

  await step('the schedules view shows a schedule created through the CLI, with its runs', async () => {
    const natsUrl = logs().match(/NATS URL: (\S+)/)[1];
    const cli = (...args) => execFileSync(BTP, args, { env: { ...process.env, BTP_NATS_URL: natsUrl }, encoding: 'utf8' });
    cli('schedule', 'create', 'often', '--every', '2s', '--src', srcRoot, '--dst', path.join(tmp, 'scheduled'));
    await a.goto(`${base}/#/schedules`);
    const row = a.locator('tr[data-schedule=often]');
    await row.locator('[data-state=active]').waitFor();
    assert.match(await row.innerText(), /every 2s/);
    assert.notEqual(await row.locator('[data-next]').innerText(), '–', 'no next firing shown');
    await row.locator('a').first().click();
    await a.waitForURL(/#\/schedule\/often/);
    await a.locator('#runs tbody tr[data-run="1"] [data-state=completed]').waitFor();
    const run = await a.locator('#runs tbody tr[data-run="1"]').innerText();
    assert.match(run, new RegExp(`\\b${tree.length}\\b`), `run 1 does not show ${tree.length} files copied: ${run}`);
    await a.screenshot({ path: path.join(ARTIFACTS, '09-schedule-runs.png'), fullPage: true });
    cli('schedule', 'pause', 'often');
    await a.locator('#schedule-state [data-state=paused]').waitFor();
    await a.goto(`${base}/#/schedules`);
    await a.locator('tr[data-schedule=often] [data-state=paused]').waitFor();
  });

  await step('the task view shows the report export of a task created with report_to', async () => {
    const reports = path.join(tmp, 'reports');
    const t = await call(base, 'task.create', { src: srcRoot, dst: path.join(tmp, 'reported'), start: true, report_to: reports });
    await a.goto(`${base}/#/task/${encodeURIComponent(t.id)}`);
    await a.locator('#task-state [data-state=completed]').waitFor();
    await a.locator('tr[data-delivery=report_export] [data-state=done]').waitFor();
    const shown = await a.locator('tr[data-delivery=report_export]').innerText();
    assert.ok(shown.includes(reports), `the report's destination is not shown: ${shown}`);
    const summary = JSON.parse(fs.readFileSync(path.join(reports, t.id, 'summary.json'), 'utf8'));
    assert.equal(summary.task, t.id);
    assert.equal(summary.counters.files_copied, tree.length);
    await a.screenshot({ path: path.join(ARTIFACTS, '10-report-export.png'), fullPage: true });
  });

  await step('a server with tokens makes the console ask for one, and refuses a wrong one', async () => {
    const natsPort = await freePort();
    const httpPort = await freePort();
    const dir = path.join(tmp, 'secured');
    fs.mkdirSync(dir);
    const nats = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((p) => fs.existsSync(p)) || 'nats-server';
    extra.push(spawn(nats, ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', path.join(dir, 'nats')], { stdio: 'ignore' }));
    const tokenFile = path.join(dir, 'admin.token');
    extra.push(spawn(BTP, ['server', 'run', '--nats-url', `nats://127.0.0.1:${natsPort}`, '--data-dir', dir,
      '--admin-token-file', tokenFile, '--http-addr', `127.0.0.1:${httpPort}`], { stdio: 'ignore' }));
    const secured = `http://127.0.0.1:${httpPort}`;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const up = await fetch(`${secured}/api/v1/server.health`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }).then((r) => r.ok, () => false);
      if (up && fs.existsSync(tokenFile)) break;
      assert.ok(Date.now() < deadline, 'the server with tokens did not start');
      await new Promise((r) => setTimeout(r, 200));
    }
    const c = await browserB.newPage();
    c.setDefaultTimeout(TIMEOUT);
    await c.goto(secured);
    await c.locator('#token-form').waitFor();
    await c.fill('#token-form [name=token]', 'btp_not-a-token');
    await c.click('#token-form button');
    await c.locator('#token-form', { hasText: 'the API token is not valid' }).waitFor();
    assert.equal(await c.locator('#tasks').count(), 0, 'a wrong token showed the tasks');
    await c.screenshot({ path: path.join(ARTIFACTS, '08-token-refused.png') });
    await c.fill('#token-form [name=token]', fs.readFileSync(tokenFile, 'utf8').trim());
    await c.click('#token-form button');
    await c.locator('#tasks tbody tr').first().waitFor();
    assert.match(await c.locator('#server').innerText(), /client\(s\) online/);

    // A page of another origin, without any content security policy of its own, posts to the
    // standalone console's API as a CSRF page would: a no-cors text/plain POST (which a
    // browser sends without asking), and a JSON fetch with the token (preflighted, never
    // granted). Neither creates anything.
    const before = (await call(base, 'task.list', { limit: 5000 })).tasks.length;
    // Chromium's own guards for pages that call local addresses are off here, so that what
    // refuses is the server.
    const browserC = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu',
        '--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults'],
    });
    extraBrowsers.push(browserC);
    const evil = await browserC.newPage();
    await evil.route('http://evil.example/**', (route) => route.fulfill({ contentType: 'text/html', body: '<p>evil</p>' }));
    await evil.goto('http://evil.example/');
    const attempts = await evil.evaluate(async ({ target, token }) => {
      const body = JSON.stringify({ src: '/etc', dst: '/tmp/btp-csrf-loot', start: true });
      const out = [];
      try {
        const r = await fetch(`${target}/api/v1/task.create`, { method: 'POST', mode: 'no-cors', body });
        out.push(`no-cors: ${r.type}`);
      } catch (e) { out.push(`no-cors: ${e.name}`); }
      try {
        await fetch(`${target}/api/v1/task.create`, {
          method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body,
        });
        out.push('cors: answered');
      } catch (e) { out.push(`cors: ${e.name}`); }
      return out;
    }, { target: base, token: standaloneToken });
    log(`cross-origin attempts: ${attempts.join(', ')}`);
    results.push(`     cross-origin attempts from http://evil.example: ${attempts.join(', ')}`);
    assert.equal(attempts[0], 'no-cors: opaque', 'the no-cors POST did not reach the server');
    assert.ok(!attempts.includes('cors: answered'), 'a cross-origin page read an answer');
    const after = (await call(base, 'task.list', { limit: 5000 })).tasks.length;
    assert.equal(after, before, 'a page of another origin created a task');
    assert.ok(!fs.existsSync('/tmp/btp-csrf-loot'), 'a page of another origin copied files');
    await c.close();
  });

  await step('no page or log showed the endpoint secret', async () => {
    for (const p of [a, b]) assert.ok(!(await p.content()).includes(SECRET));
    assert.ok(!logs().includes(SECRET), 'the secret is in the standalone output');
  });
} catch (e) {
  failed = true;
  console.error('[console test] FAILED:', e.stack || e);
  for (const [n, b] of [['a', browserA], ['b', browserB]]) {
    for (const ctx of b.contexts()) {
      for (const p of ctx.pages()) await p.screenshot({ path: path.join(ARTIFACTS, `failure-${n}.png`), fullPage: true }).catch(() => {});
    }
  }
  console.error(logs().split('\n').slice(-40).join('\n'));
} finally {
  await browserA.close();
  await browserB.close();
  for (const x of extraBrowsers) await x.close();
  for (const p of extra) p.kill('SIGTERM');
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  fs.rmSync(tmp, { recursive: true, force: true });
}
fs.writeFileSync(path.join(ARTIFACTS, 'results.txt'), `${results.join('\n')}\n`);
console.log(results.join('\n'));
console.log(`[console test] screenshots and report in ${ARTIFACTS}`);
process.exit(failed ? 1 : 0);
