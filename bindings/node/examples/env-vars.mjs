// The seed's "With Environment Variables" pattern, verbatim but for the
// import lines; `config` is the Quick Start's.
import { BackgroundProcessManager, PluginEnvironmentManager, PLUGIN_ENVS_DIR, PLUGIN_TIMEOUTS } from 'tend';
import { join } from 'path';

const manager = new BackgroundProcessManager();
const envManager = new PluginEnvironmentManager();
const config = {
  pluginName: 'my-plugin',
  pluginPath: '/path/to/plugin',
  command: envManager.getPythonPath('my-plugin'),
  args: ['daemon.py'],
  socketPath: join(PLUGIN_ENVS_DIR, 'my-plugin', 'daemon.sock'),
  startupTimeout: PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_STARTUP,
};

await manager.startProcess({
  ...config,
  envVars: {
    API_KEY: process.env.API_KEY,
    PORT: '8080',
  },
});

const port = await manager.call('my-plugin', 'env', { name: 'PORT' });
const apiKey = await manager.call('my-plugin', 'env', { name: 'API_KEY' });
console.log(JSON.stringify({ port, apiKey }));
await manager.stopAllProcesses();
