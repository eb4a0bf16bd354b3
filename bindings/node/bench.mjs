// Per-call overhead of the Node binding: queries per second, and
// startProcess latency through the binding against the Rust API in the
// same process, on the same daemon.
//
//   node bench.mjs [--rounds N] [--json]
//
// The daemon is $TEND_BENCH_DAEMON, else the repo's release testd
// (cargo build --release -p testd), else ../fixtures/daemon.py.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

import { BackgroundProcessManager } from './index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const native = createRequire(import.meta.url)('./index.node');
const argv = process.argv.slice(2);
const rounds = Number(argv[argv.indexOf('--rounds') + 1]) || 30;
const json = argv.includes('--json');

const testd = path.resolve(here, '..', '..', 'target', 'release', 'testd');
const daemon = process.env.TEND_BENCH_DAEMON
  ? { command: process.env.TEND_BENCH_DAEMON, args: [] }
  : existsSync(testd)
    ? { command: testd, args: [] }
    : { command: 'python3', args: [path.resolve(here, '..', 'fixtures', 'daemon.py')] };

const dir = mkdtempSync('/tmp/tb-');
const config = (name) => ({ pluginName: name, ...daemon, socketPath: path.join(dir, `${name}.sock`) });

function perSecond(n, body) {
  const begin = process.hrtime.bigint();
  for (let i = 0; i < n; i++) body();
  const ns = Number(process.hrtime.bigint() - begin);
  return { calls: n, perSecond: Math.round((n * 1e9) / ns), nsPerCall: Math.round(ns / n) };
}

function summary(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { rounds: sorted.length, medianMs: +at(0.5).toFixed(2), p90Ms: +at(0.9).toFixed(2) };
}

const manager = new BackgroundProcessManager();
try {
  await manager.startProcess(config('q'));
  const results = {
    daemon: `${path.basename(daemon.command)} ${daemon.args.map((a) => path.basename(a)).join(' ')}`.trim(),
    isRunning: perSecond(200_000, () => manager.isRunning('q')),
    getState: perSecond(200_000, () => manager.getState('q')),
    getProcessInfo: perSecond(100_000, () => manager.getProcessInfo('q')),
  };
  const direct = new native.NativeManager();
  await direct.startProcess({ pluginName: 'd', command: daemon.command, args: daemon.args, socketPath: path.join(dir, 'd.sock'), env: [] });
  const [isRunningNs, processInfoNs] = direct._benchRustQueries('d', 100_000);
  results.rust = { isRunningNsPerCall: Math.round(isRunningNs), processInfoNsPerCall: Math.round(processInfoNs) };
  // Rounds alternate between the binding (timed here) and the Rust API
  // (timed in Rust, on a second manager of this process), so both see the
  // same load.
  const node = [];
  const rust = [];
  const rustConfig = { pluginName: 'r', command: daemon.command, args: daemon.args, socketPath: path.join(dir, 'r.sock'), env: [] };
  for (let i = 0; i < rounds; i++) {
    const begin = process.hrtime.bigint();
    await manager.startProcess(config('s'));
    node.push(Number(process.hrtime.bigint() - begin) / 1e6);
    await manager.stopProcess('s');
    rust.push(await direct._benchStartStop(rustConfig));
  }
  await direct.stopAllProcesses();
  results.startProcess = { node: summary(node), rust: summary(rust) };
  if (json) {
    console.log(JSON.stringify(results, null, 2));
  } else {
    const n = (x) => x.toLocaleString('en-US');
    console.log(`daemon: ${results.daemon}`);
    for (const key of ['isRunning', 'getState', 'getProcessInfo']) {
      console.log(`${key.padEnd(15)} ${n(results[key].perSecond).padStart(12)} calls/s  (${n(results[key].nsPerCall)} ns/call)`);
    }
    console.log(`rust API        is_running ${n(results.rust.isRunningNsPerCall)} ns/call, process_info ${n(results.rust.processInfoNsPerCall)} ns/call`);
    const s = results.startProcess;
    console.log(`startProcess    node ${s.node.medianMs} ms median, ${s.node.p90Ms} ms p90; rust ${s.rust.medianMs} ms median, ${s.rust.p90Ms} ms p90 (${rounds} rounds)`);
  }
} finally {
  await manager.stopAllProcesses();
  rmSync(dir, { recursive: true, force: true });
}
