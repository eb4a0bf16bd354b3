// Helpers of the Node binding's tests: temp dirs with short paths, real
// daemons (../../fixtures/daemon.py), waiting on conditions with deadlines,
// and child Node processes that are killed at the end whatever happens.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const DAEMON = path.resolve(PACKAGE_DIR, '..', 'fixtures', 'daemon.py');

/** A temp dir with a short path (sockets go in it), removed by `cleanup`. */
export function tempDir(cleanup) {
  const dir = mkdtempSync('/tmp/tn-');
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * A directory in which `import ... from 'tend'` finds this package (through
 * node_modules/tend), with a plugin dir holding daemon.py and an envs dir
 * holding my-plugin/ (where the seed's examples put the socket).
 */
export function appDir(cleanup) {
  const dir = tempDir(cleanup);
  mkdirSync(path.join(dir, 'node_modules'));
  symlinkSync(PACKAGE_DIR, path.join(dir, 'node_modules', 'tend'));
  mkdirSync(path.join(dir, 'plugin'));
  copyFileSync(DAEMON, path.join(dir, 'plugin', 'daemon.py'));
  mkdirSync(path.join(dir, 'envs', 'my-plugin'), { recursive: true });
  return dir;
}

/** A config for the fixture daemon. */
export function daemonConfig(dir, name, extra = {}) {
  return {
    pluginName: name,
    command: 'python3',
    args: [DAEMON],
    socketPath: path.join(dir, `${name}.sock`),
    startupTimeout: 20000,
    shutdownGracePeriod: 5000,
    ...extra,
  };
}

/** Waits until `check()` is truthy, failing with `what` after `ms`. */
export async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The start time of a process (field 22 of /proc/PID/stat), or null. */
export function startTime(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') return null; // a zombie is dead
    return fields[19];
  } catch {
    return null;
  }
}

/** A process identity that survives PID reuse. */
export function identity(pid) {
  return { pid, start: startTime(pid) };
}

/** Whether the process of `id` is still alive (same PID, same start time). */
export function alive(id) {
  return id.start !== null && startTime(id.pid) === id.start;
}

/** SIGKILLs `id` if it is still the process it was. */
export function killIfAlive(id) {
  if (alive(id)) {
    try {
      process.kill(id.pid, 'SIGKILL');
    } catch {}
  }
}

/**
 * Runs `node script` in `cwd`; resolves the child and a function that
 * waits for the next stdout line matching `predicate`. The child is
 * SIGKILLed by `cleanup`.
 */
export function runNode(cleanup, cwd, script, env = {}) {
  const child = spawn(process.execPath, [script], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const id = { pid: child.pid, start: startTime(child.pid) };
  cleanup.push(() => killIfAlive(id));
  let out = '';
  let err = '';
  const waiters = [];
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    out += chunk;
    for (const w of waiters.splice(0)) w();
  });
  child.stderr.on('data', (chunk) => {
    err += chunk;
  });
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return {
    child,
    /** The exit, failing if it does not come within `ms`. */
    exited: (ms = 30000) => {
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${script} still running after ${ms} ms; stderr: ${err}`)), ms);
      });
      return Promise.race([exited, late]).finally(() => clearTimeout(timer));
    },
    stdout: () => out,
    stderr: () => err,
    /** The first stdout line parsed as JSON that has `key`. */
    async message(key, ms = 30000) {
      return waitFor(`a line with ${key} from ${script} (stderr: ${err})`, () => {
        for (const line of out.split('\n')) {
          if (!line.startsWith('{')) continue;
          const parsed = JSON.parse(line);
          if (key in parsed) return parsed;
        }
        return null;
      }, ms);
    },
  };
}

/** Runs the cleanup steps, newest first. */
export async function runCleanup(cleanup) {
  for (const step of cleanup.splice(0).reverse()) {
    try {
      await step();
    } catch {}
  }
}
