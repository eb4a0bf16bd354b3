// The seed's BackgroundProcessManager surface, and what tend adds, against
// real daemons (../../fixtures/daemon.py).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import {
  BackgroundProcessManager,
  PluginEnvironmentManager,
  ProcessState,
  PLUGIN_TIMEOUTS,
  PLUGIN_ENVS_DIR,
} from '../index.js';
import { alive, daemonConfig, identity, killIfAlive, runCleanup, runNode, tempDir, waitFor } from './helpers.mjs';

const cleanup = [];
after(() => runCleanup(cleanup));

/** A manager whose daemons are stopped (and, failing that, killed) at the end. */
function manager() {
  const m = new BackgroundProcessManager();
  cleanup.push(async () => {
    for (const info of m.list()) if (info.pid) cleanup.push(() => killIfAlive(identity(info.pid)));
    await m.stopAllProcesses();
  });
  return m;
}

test('ProcessState has the seed members with lower-case values', () => {
  assert.deepEqual({ ...ProcessState }, {
    STARTING: 'starting',
    RUNNING: 'running',
    STOPPING: 'stopping',
    STOPPED: 'stopped',
    ERROR: 'error',
  });
});

test('PLUGIN_TIMEOUTS has the seed constants', () => {
  assert.deepEqual({ ...PLUGIN_TIMEOUTS }, {
    BACKGROUND_PROCESS_STARTUP: 30000,
    BACKGROUND_PROCESS_SHUTDOWN_GRACE_PERIOD: 5000,
    BACKGROUND_PROCESS_HEALTH_CHECK_INTERVAL: 30000,
    BACKGROUND_PROCESS_HEALTH_CHECK_TIMEOUT: 5000,
    BACKGROUND_PROCESS_MAX_HEALTH_CHECK_FAILURES: 3,
    BACKGROUND_PROCESS_MAX_RESTART_ATTEMPTS: 3,
    BACKGROUND_PROCESS_RESTART_DELAY: 5000,
  });
});

test('queries of a name never started say undefined', () => {
  const m = manager();
  assert.equal(m.isRunning('nobody'), false);
  assert.equal(m.getState('nobody'), undefined);
  assert.equal(m.getPid('nobody'), undefined);
  assert.equal(m.getProcessInfo('nobody'), undefined);
});

test('startProcess resolves running; info has the seed fields and the config as given', async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  const config = daemonConfig(dir, 'info', {
    healthcheck: { interval: 1000, timeout: 500, retries: 2 },
    maxRestartAttempts: 1,
    restartDelay: 100,
  });
  await m.startProcess(config);
  assert.equal(m.isRunning('info'), true);
  assert.equal(m.getState('info'), ProcessState.RUNNING);
  const pid = m.getPid('info');
  assert.ok(Number.isInteger(pid) && pid > 1);
  const info = m.getProcessInfo('info');
  assert.equal(info.state, 'running');
  assert.equal(info.pid, pid);
  assert.equal(info.failedHealthChecks, 0);
  assert.equal(info.restartAttempts, 0);
  assert.equal(info.lastError, undefined);
  assert.equal(info.config, config, 'the very object given');
  const daemon = identity(pid);
  await m.stopProcess('info');
  assert.equal(m.getState('info'), ProcessState.STOPPED);
  assert.equal(m.isRunning('info'), false);
  assert.equal(m.getPid('info'), undefined);
  assert.equal(alive(daemon), false);
  assert.equal(existsSync(config.socketPath), false, 'the daemon removed its socket on SIGTERM');
});

test('a failed start rejects, and getProcessInfo keeps lastError and the config', async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  const config = daemonConfig(dir, 'fails', { envVars: { DAEMON_FAIL: '1' } });
  await assert.rejects(m.startProcess(config), /exited with code 3.*cannot read config\.json/s);
  const info = m.getProcessInfo('fails');
  assert.equal(info.state, 'error');
  assert.match(info.lastError, /cannot read config\.json/);
  assert.equal(info.config, config);
  assert.equal(m.isRunning('fails'), false);
});

test('a config tend refuses still leaves lastError and the config', async () => {
  const m = manager();
  const config = { pluginName: 'bad', command: 'python3', socketPath: 'relative.sock' };
  await assert.rejects(m.startProcess(config), /bad/);
  const info = m.getProcessInfo('bad');
  assert.equal(info.state, 'error');
  assert.match(info.lastError, /socket/);
  assert.equal(info.config, config);
});

test('bad keys and types are refused, naming the daemon and the key', async () => {
  const m = manager();
  await assert.rejects(
    m.startProcess({ pluginName: 'typo', command: 'x', startupTimeOut: 5 }),
    /startProcess\("typo"\): unknown config key "startupTimeOut"/,
  );
  await assert.rejects(
    m.startProcess({ pluginName: 'neg', command: 'x', restartDelay: -1 }),
    /startProcess\("neg"\): restartDelay must be a number of milliseconds/,
  );
  await assert.rejects(
    m.startProcess({ pluginName: 'env', command: 'x', envVars: { PORT: 8080 } }),
    /envVars\.PORT must be a string/,
  );
  await assert.rejects(m.startProcess({ command: 'x' }), /pluginName must be a non-empty string/);
});

test('startProcess after stopAllProcesses rejects with the seed message', async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  await m.startProcess(daemonConfig(dir, 'first'));
  const daemon = identity(m.getPid('first'));
  await m.stopAllProcesses();
  assert.equal(alive(daemon), false);
  await assert.rejects(m.startProcess(daemonConfig(dir, 'late')), (error) => {
    assert.match(error.message, /Cannot start process during shutdown/);
    return true;
  });
});

test('restartProcess gives a new incarnation', async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  await m.startProcess(daemonConfig(dir, 'again'));
  const first = identity(m.getPid('again'));
  await m.restartProcess('again');
  assert.equal(m.getState('again'), 'running');
  assert.equal(alive(first), false);
  assert.notEqual(m.getPid('again'), first.pid);
});

test('stopProcess of a name never started resolves', async () => {
  await manager().stopProcess('never');
});

test('envVars reach the daemon; an undefined value is left out', async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  await m.startProcess(daemonConfig(dir, 'envs', { envVars: { PORT: '8080', UNSET_KEY: undefined } }));
  assert.equal(await m.call('envs', 'env', { name: 'PORT' }), '8080');
  assert.equal(await m.call('envs', 'env', { name: 'UNSET_KEY' }), null);
  assert.equal(await m.call('envs', 'ping'), 'pong');
  await m.stopProcess('envs');
});

test("'stateChange' events and the async iterator see starting, running, stopping, stopped", async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  const seen = [];
  const listener = (event) => {
    if (event.name === 'events') seen.push(`${event.from}->${event.to}`);
  };
  m.on('stateChange', listener);
  const iterator = m.events();
  await m.startProcess(daemonConfig(dir, 'events'));
  await m.stopProcess('events');
  const iterated = [];
  for await (const event of iterator) {
    assert.equal(event.name, 'events');
    assert.equal(typeof event.reason, 'string');
    iterated.push(`${event.from}->${event.to}`);
    if (event.to === 'stopped') break;
  }
  const expected = ['stopped->starting', 'starting->running', 'running->stopping', 'stopping->stopped'];
  assert.deepEqual(iterated, expected);
  await waitFor('four stateChange events', () => seen.length >= 4);
  assert.deepEqual(seen, expected);
  m.off('stateChange', listener);
});

test('a program awaiting the next event is kept alive until it comes', async () => {
  const dir = tempDir(cleanup);
  const script = path.join(dir, 'await-event.mjs');
  writeFileSync(script, `
    import { BackgroundProcessManager } from ${JSON.stringify(path.resolve('index.js'))};
    const m = new BackgroundProcessManager();
    const events = m.events();
    await m.startProcess(${JSON.stringify(daemonConfig(dir, 'watched', { restartDelay: 100 }))});
    // next() by hand: leaving a for-await loop would close the iterator.
    while ((await events.next()).value.to !== 'running');
    console.log(JSON.stringify({ pid: m.getPid('watched') }));
    // Nothing but this wait is left on the loop: the test kills the daemon.
    for await (const event of events) {
      console.log(JSON.stringify({ event }));
      break;
    }
    await m.stopAllProcesses();
  `);
  const run = runNode(cleanup, dir, script);
  const { pid } = await run.message('pid');
  const daemon = identity(pid);
  cleanup.push(() => killIfAlive(daemon));
  process.kill(pid, 'SIGKILL');
  const { event } = await run.message('event');
  assert.equal(event.from, 'running');
  assert.equal(event.name, 'watched');
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
});

test('logs and followLogs return the daemon output', async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  await m.startProcess(daemonConfig(dir, 'logs'));
  await waitFor('the listening line', () => m.logs('logs', 10).some((l) => l.text.includes('listening')));
  const followed = [];
  const follower = m.followLogs('logs', (line) => followed.push(line));
  await m.stopProcess('logs');
  await waitFor('the stop line', () => followed.some((l) => l.stream === 'stderr' && l.text.includes('stopped on SIGTERM')));
  follower.close();
  assert.throws(() => m.logs('nobody', 1), /nobody/);
});

test('PluginEnvironmentManager gives python3 until a venv exists', () => {
  const dir = tempDir(cleanup);
  const envs = new PluginEnvironmentManager(dir);
  assert.equal(envs.root, dir);
  assert.equal(envs.getPythonPath('my-plugin'), 'python3');
  assert.equal(envs.getEnvDir('my-plugin'), path.join(dir, 'my-plugin'));
  assert.throws(() => envs.getEnvDir('../escape'), /escape/);
  assert.equal(typeof PLUGIN_ENVS_DIR, 'string');
});

test("startProcess does not block Node's event loop", async () => {
  const dir = tempDir(cleanup);
  const m = manager();
  let ticks = 0;
  const ticker = setInterval(() => ticks++, 10);
  const begin = Date.now();
  // The daemon listens only after 0.5 s: the loop must keep ticking.
  await m.startProcess(daemonConfig(dir, 'slow', { envVars: { DAEMON_DELAY: '0.5' } }));
  const elapsed = Date.now() - begin;
  clearInterval(ticker);
  assert.ok(elapsed >= 500, `started after ${elapsed} ms`);
  assert.ok(ticks >= 10, `only ${ticks} ticks of 10 ms in ${elapsed} ms`);
  await m.stopProcess('slow');
});

test('a manager nobody references keeps its daemons until stopAllProcesses', async () => {
  const dir = tempDir(cleanup);
  const script = path.join(dir, 'unreferenced.mjs');
  writeFileSync(script, `
    import { BackgroundProcessManager } from ${JSON.stringify(path.resolve('index.js'))};
    import { setFlagsFromString } from 'node:v8';
    import { runInNewContext } from 'node:vm';
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc');
    async function start() {
      const m = new BackgroundProcessManager();
      await m.startProcess(${JSON.stringify(daemonConfig(dir, 'kept'))});
      return m.getPid('kept');
    }
    const pid = await start();
    for (let i = 0; i < 5; i++) { gc(); await new Promise((r) => setImmediate(r)); }
    console.log(JSON.stringify({ pid }));
    process.stdin.resume();
  `);
  const run = runNode(cleanup, dir, script);
  const { pid } = await run.message('pid');
  const daemon = identity(pid);
  cleanup.push(() => killIfAlive(daemon));
  assert.ok(alive(daemon), 'the daemon outlived the garbage collection of its manager');
  run.child.stdin.end();
  await run.exited();
  await waitFor('the daemon to be gone after Node exited', () => !alive(daemon));
});

test('ensurePython builds a venv; getPythonPath then gives its interpreter', async () => {
  const dir = tempDir(cleanup);
  const envs = new PluginEnvironmentManager(path.join(dir, 'envs'));
  const plugin = path.join(dir, 'plugin');
  mkdirSync(plugin);
  const outcome = await envs.ensurePython('venv-plugin', plugin);
  assert.equal(outcome.path, path.join(dir, 'envs', 'venv-plugin', 'venv', 'bin', 'python'));
  assert.equal(outcome.created, true);
  assert.equal(outcome.installed, false, 'no requirements file, so pip did not run');
  assert.equal(envs.getPythonPath('venv-plugin'), outcome.path);
  const again = await envs.ensurePython('venv-plugin', plugin);
  assert.equal(again.created, false);
});

test('the manager does not keep Node alive: a script that stops its daemons exits by itself', async () => {
  const dir = tempDir(cleanup);
  const script = path.join(dir, 'idle.mjs');
  writeFileSync(script, `
    import { BackgroundProcessManager } from ${JSON.stringify(path.resolve('index.js'))};
    const m = new BackgroundProcessManager();
    m.on('stateChange', () => {});
    await m.startProcess(${JSON.stringify(daemonConfig(dir, 'idle'))});
    await m.stopAllProcesses();
    console.log(JSON.stringify({ stopped: true }));
  `);
  const run = runNode(cleanup, dir, script);
  const { code } = await run.exited();
  assert.equal(code, 0, run.stderr());
  assert.match(run.stdout(), /"stopped":true/);
});
