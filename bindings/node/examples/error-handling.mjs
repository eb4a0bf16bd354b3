// The seed's "Error Handling" pattern, verbatim but for the import lines;
// the daemon fails before it listens (DAEMON_FAIL=1).
import { BackgroundProcessManager, PluginEnvironmentManager, PLUGIN_ENVS_DIR, PLUGIN_TIMEOUTS } from 'tend';
import { join } from 'path';

const manager = new BackgroundProcessManager();
const envManager = new PluginEnvironmentManager();
const pluginName = 'my-plugin';
const config = {
  pluginName,
  pluginPath: '/path/to/plugin',
  command: envManager.getPythonPath('my-plugin'),
  args: ['daemon.py'],
  socketPath: join(PLUGIN_ENVS_DIR, 'my-plugin', 'daemon.sock'),
  startupTimeout: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_STARTUP,
  envVars: { DAEMON_FAIL: '1' },
};

try {
  await manager.startProcess(config);
} catch (error) {
  const info = manager.getProcessInfo(pluginName);
  console.error('Failed:', info?.lastError);
}

console.log(JSON.stringify({ state: manager.getState(pluginName) }));
await manager.stopAllProcesses();
