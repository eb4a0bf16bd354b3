// The seed's Quick Start start, then its "Application Shutdown" pattern,
// verbatim but for the import lines. Prints the daemon's PID, then waits
// for SIGTERM.
import { BackgroundProcessManager, PluginEnvironmentManager, PLUGIN_ENVS_DIR, PLUGIN_TIMEOUTS } from 'tend';
import { join } from 'path';

const manager = new BackgroundProcessManager();
const envManager = new PluginEnvironmentManager();

// Start a daemon
await manager.startProcess({
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
});

process.on('SIGTERM', async () => {
  await manager.stopAllProcesses();
  process.exit(0);
});

console.log(JSON.stringify({ pid: manager.getPid('my-plugin') }));
setInterval(() => {}, 1000);
