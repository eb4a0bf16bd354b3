// Compiled by tsc --strict in bindings/run-tests (never run): the seed's
// examples and the additions type-check against index.d.ts.
import { BackgroundProcessManager, PluginEnvironmentManager, PLUGIN_ENVS_DIR, PLUGIN_TIMEOUTS, ProcessState, type BackgroundProcessConfig } from 'tend';
import { join } from 'path';

const manager = new BackgroundProcessManager();
const envManager = new PluginEnvironmentManager();
const config: BackgroundProcessConfig = {
  pluginName: 'my-plugin',
  pluginPath: '/path/to/plugin',
  command: envManager.getPythonPath('my-plugin'),
  args: ['daemon.py'],
  socketPath: join(PLUGIN_ENVS_DIR, 'my-plugin', 'daemon.sock'),
  startupTimeout: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_STARTUP,
  shutdownGracePeriod: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_SHUTDOWN_GRACE_PERIOD,
  healthcheck: {
    interval: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_HEALTH_CHECK_INTERVAL,
    timeout: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_HEALTH_CHECK_TIMEOUT,
    retries: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_MAX_HEALTH_CHECK_FAILURES,
  },
};
async function main() {
  await manager.startProcess(config);
  await manager.startProcess({ ...config, envVars: { API_KEY: process.env.API_KEY, PORT: '8080' } });
  const isRunning: boolean = manager.isRunning('my-plugin');
  const state: ProcessState | undefined = manager.getState('my-plugin');
  const pid: number | undefined = manager.getPid('my-plugin');
  const info = manager.getProcessInfo('my-plugin');
  if (info) console.log(info.state === ProcessState.RUNNING, info.failedHealthChecks, info.restartAttempts, info.lastError);
  try { await manager.startProcess(config); } catch (error) { console.error('Failed:', manager.getProcessInfo('my-plugin')?.lastError); }
  manager.on('stateChange', (e) => console.log(e.from, e.to));
  for await (const e of manager.events()) { console.log(e.reason); break; }
  process.on('SIGTERM', async () => { await manager.stopAllProcesses(); process.exit(0); });
  console.log(isRunning, state, pid, await manager.call('my-plugin', 'ping'));
}
main();
