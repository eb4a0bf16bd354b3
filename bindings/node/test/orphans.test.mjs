// A Node process that exits normally, dies of an uncaught exception, or is
// SIGKILLed while a daemon runs leaves no daemon behind: tend's guard and
// the parent-death signal stop it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { PACKAGE_DIR, alive, daemonConfig, identity, killIfAlive, runCleanup, runNode, tempDir, waitFor } from './helpers.mjs';

const cleanup = [];
after(() => runCleanup(cleanup));

/**
 * Runs a program that starts a daemon, prints its PID, and does `ending`
 * when the test closes its stdin (so the test sees the daemon alive first).
 */
async function startDaemonThen(ending) {
  const dir = tempDir(cleanup);
  const script = path.join(dir, 'app.mjs');
  writeFileSync(script, `
    import { BackgroundProcessManager } from ${JSON.stringify(path.join(PACKAGE_DIR, 'index.js'))};
    const manager = new BackgroundProcessManager();
    await manager.startProcess(${JSON.stringify(daemonConfig(dir, 'orphan'))});
    console.log(JSON.stringify({ pid: manager.getPid('orphan') }));
    process.stdin.resume();
    process.stdin.on('end', () => { process.stdin.destroy(); ${ending} });
  `);
  const run = runNode(cleanup, dir, script);
  const { pid } = await run.message('pid');
  const daemon = identity(pid);
  cleanup.push(() => killIfAlive(daemon));
  assert.ok(alive(daemon), 'the daemon runs');
  return { run, daemon };
}

test('normal exit of Node: no daemon left', async () => {
  // Ends (nothing left on its event loop) once its stdin is closed.
  const { run, daemon } = await startDaemonThen('');
  run.child.stdin.end();
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  await waitFor('the daemon to be gone', () => !alive(daemon));
});

test('uncaught exception: no daemon left', async () => {
  const { run, daemon } = await startDaemonThen("throw new Error('boom');");
  run.child.stdin.end();
  const { code } = await run.exited();
  assert.equal(code, 1);
  assert.match(run.stderr(), /boom/);
  await waitFor('the daemon to be gone', () => !alive(daemon));
});

test('SIGKILL of Node: no daemon left', async () => {
  const { run, daemon } = await startDaemonThen('');
  run.child.kill('SIGKILL');
  const { signal } = await run.exited();
  assert.equal(signal, 'SIGKILL');
  await waitFor('the daemon to be gone', () => !alive(daemon));
});
