// The seed's Quick Start start, then its Monitoring section, verbatim but
// for the import lines.
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

// Check if running
const isRunning = manager.isRunning('my-plugin');

// Get state
const state = manager.getState('my-plugin');

// Get PID
const pid = manager.getPid('my-plugin');

// Get detailed info
const info = manager.getProcessInfo('my-plugin');
console.log(info.state);
console.log(info.failedHealthChecks);
console.log(info.restartAttempts);
console.log(info.lastError);

console.log(JSON.stringify({ isRunning, state, pid }));
await manager.stopAllProcesses();
