// The seed's quick-reference examples (../examples/*.mjs) run with only
// their import lines changed: each runs as its own Node program in an app
// dir where 'tend' resolves to this package, with the '/path/to/plugin'
// placeholder pointing at a plugin dir that holds the fixture daemon.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { PACKAGE_DIR, alive, appDir, identity, runCleanup, runNode, waitFor } from './helpers.mjs';

const cleanup = [];
after(() => runCleanup(cleanup));

/** Copies example `name` into a fresh app dir and runs it. */
function runExample(name) {
  const dir = appDir(cleanup);
  const source = readFileSync(path.join(PACKAGE_DIR, 'examples', `${name}.mjs`), 'utf8');
  const script = path.join(dir, `${name}.mjs`);
  writeFileSync(script, source.replaceAll('/path/to/plugin', path.join(dir, 'plugin')));
  const run = runNode(cleanup, dir, script, { TEND_PLUGIN_ENVS_DIR: path.join(dir, 'envs') });
  return { dir, run, socket: path.join(dir, 'envs', 'my-plugin', 'daemon.sock') };
}

test('Quick Start: starts, stops, stops all, exits 0', async () => {
  const { run, socket } = runExample('quickstart');
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  assert.equal(existsSync(socket), false);
});

test('Monitoring: prints state, failedHealthChecks, restartAttempts, lastError', async () => {
  const { run } = runExample('monitoring');
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  const lines = run.stdout().trim().split('\n');
  assert.deepEqual(lines.slice(0, 4), ['running', '0', '0', 'undefined']);
  const summary = JSON.parse(lines[4]);
  assert.equal(summary.isRunning, true);
  assert.equal(summary.state, 'running');
  assert.ok(Number.isInteger(summary.pid));
});

test('Environment variables: PORT reaches the daemon, an unset API_KEY is left out', async () => {
  const { run } = runExample('env-vars');
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  assert.deepEqual(JSON.parse(run.stdout().trim()), { port: '8080', apiKey: null });
});

test('Error handling: the catch block prints lastError', async () => {
  const { run } = runExample('error-handling');
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  assert.match(run.stderr(), /^Failed: .*exited with code 3[^]*cannot read config\.json/m);
  assert.deepEqual(JSON.parse(run.stdout().trim()), { state: 'error' });
});

test('Application shutdown: SIGTERM stops the daemon gracefully, then exit 0', async () => {
  const { run, socket } = runExample('app-shutdown');
  const { pid } = await run.message('pid');
  const daemon = identity(pid);
  cleanup.push(() => alive(daemon) && process.kill(pid, 'SIGKILL'));
  assert.ok(alive(daemon));
  run.child.kill('SIGTERM');
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  assert.equal(alive(daemon), false);
  // The daemon removes its socket only in its SIGTERM handler.
  await waitFor('the socket removed', () => !existsSync(socket), 1000);
});
