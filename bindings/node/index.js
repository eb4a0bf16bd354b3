'use strict';
// The `tend` Node package: the seed's BackgroundProcessManager API, run by
// tend's Rust supervisor (index.node, built from src/lib.rs).
//
// This file keeps the parts that are about JavaScript: the config object's
// keys and types (checked here so an error names the daemon and the key),
// the config as given (getProcessInfo returns it), ProcessState and
// PLUGIN_TIMEOUTS as the seed defines them, and an EventEmitter over the
// native event callback.

const { EventEmitter } = require('node:events');
const os = require('node:os');
const path = require('node:path');

let native;
try {
  native = require('./index.node');
} catch (error) {
  if (error.code !== 'MODULE_NOT_FOUND') throw error;
  throw new Error(
    `tend: the native addon ${path.join(__dirname, 'index.node')} is missing; build it with \`npm run build\` in ${__dirname} (needs cargo)`,
  );
}

/** Where a daemon is in its life; values as in the seed (lower case). */
const ProcessState = Object.freeze({
  STARTING: 'starting',
  RUNNING: 'running',
  STOPPING: 'stopping',
  STOPPED: 'stopped',
  ERROR: 'error',
});

/** The seed's seven timing constants, in milliseconds (and counts). */
const PLUGIN_TIMEOUTS = Object.freeze({
  BACKGROUND_PROCESS_STARTUP: 30000,
  BACKGROUND_PROCESS_SHUTDOWN_GRACE_PERIOD: 5000,
  BACKGROUND_PROCESS_HEALTH_CHECK_INTERVAL: 30000,
  BACKGROUND_PROCESS_HEALTH_CHECK_TIMEOUT: 5000,
  BACKGROUND_PROCESS_MAX_HEALTH_CHECK_FAILURES: 3,
  BACKGROUND_PROCESS_MAX_RESTART_ATTEMPTS: 3,
  BACKGROUND_PROCESS_RESTART_DELAY: 5000,
});

/**
 * Where PluginEnvironmentManager keeps one environment per plugin by
 * default: $TEND_PLUGIN_ENVS_DIR, else $XDG_DATA_HOME/tend/plugin-envs,
 * else ~/.local/share/tend/plugin-envs.
 */
const PLUGIN_ENVS_DIR =
  process.env.TEND_PLUGIN_ENVS_DIR ||
  path.join(
    process.env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share'),
    'tend',
    'plugin-envs',
  );

const CONFIG_KEYS = [
  'pluginName',
  'pluginPath',
  'command',
  'args',
  'socketPath',
  'envVars',
  'startupTimeout',
  'shutdownGracePeriod',
  'healthcheck',
  'maxRestartAttempts',
  'restartDelay',
  'logFile',
];
const HEALTHCHECK_KEYS = ['interval', 'timeout', 'retries'];

function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? JSON.stringify(value) : `${typeof value} ${String(value)}`;
}

/** Checks the seed's config object and returns what the native side takes. */
function toNative(config) {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw new TypeError(`startProcess: config must be an object, not ${describe(config)}`);
  }
  const name = config.pluginName;
  if (typeof name !== 'string' || name === '') {
    throw new TypeError(
      `startProcess: config.pluginName must be a non-empty string, not ${describe(name)}`,
    );
  }
  const fail = (key, what, value) => {
    throw new TypeError(`startProcess(${JSON.stringify(name)}): ${key} must be ${what}, not ${describe(value)}`);
  };
  for (const key of Object.keys(config)) {
    if (!CONFIG_KEYS.includes(key)) {
      throw new TypeError(
        `startProcess(${JSON.stringify(name)}): unknown config key ${JSON.stringify(key)}; the keys are ${CONFIG_KEYS.join(', ')}`,
      );
    }
  }
  const optionalString = (key) => {
    const value = config[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') fail(key, 'a string', value);
    return value;
  };
  const ms = (key, value) => {
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
      fail(key, 'a number of milliseconds >= 0', value);
    }
    return value;
  };
  const count = (key, value) => {
    if (value === undefined) return undefined;
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      fail(key, 'a whole number >= 0', value);
    }
    return value;
  };
  if (typeof config.command !== 'string' || config.command === '') {
    fail('command', 'a non-empty string', config.command);
  }
  const args = config.args === undefined ? [] : config.args;
  if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) {
    fail('args', 'an array of strings', args);
  }
  const env = [];
  if (config.envVars !== undefined) {
    if (config.envVars === null || typeof config.envVars !== 'object' || Array.isArray(config.envVars)) {
      fail('envVars', 'an object of strings', config.envVars);
    }
    for (const [key, value] of Object.entries(config.envVars)) {
      // As child_process.spawn does: an undefined value (an unset
      // process.env.X passed on) leaves the variable out.
      if (value === undefined) continue;
      if (typeof value !== 'string') fail(`envVars.${key}`, 'a string', value);
      env.push([key, value]);
    }
  }
  let healthcheck;
  if (config.healthcheck !== undefined) {
    const check = config.healthcheck;
    if (check === null || typeof check !== 'object') fail('healthcheck', 'an object', check);
    for (const key of Object.keys(check)) {
      if (!HEALTHCHECK_KEYS.includes(key)) {
        throw new TypeError(
          `startProcess(${JSON.stringify(name)}): unknown healthcheck key ${JSON.stringify(key)}; the keys are ${HEALTHCHECK_KEYS.join(', ')}`,
        );
      }
    }
    healthcheck = {
      interval: ms('healthcheck.interval', check.interval ?? PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_HEALTH_CHECK_INTERVAL),
      timeout: ms('healthcheck.timeout', check.timeout ?? PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_HEALTH_CHECK_TIMEOUT),
      retries: count('healthcheck.retries', check.retries ?? PLUGIN_TIMEOUTS.BACKGROUND_PROCESS_MAX_HEALTH_CHECK_FAILURES),
    };
  }
  return {
    pluginName: name,
    command: config.command,
    args,
    pluginPath: optionalString('pluginPath'),
    socketPath: optionalString('socketPath'),
    env,
    startupTimeout: ms('startupTimeout', config.startupTimeout),
    shutdownGracePeriod: ms('shutdownGracePeriod', config.shutdownGracePeriod),
    healthcheck,
    maxRestartAttempts: count('maxRestartAttempts', config.maxRestartAttempts),
    restartDelay: ms('restartDelay', config.restartDelay),
    logFile: optionalString('logFile'),
  };
}

function withoutUndefined(object) {
  for (const key of Object.keys(object)) {
    if (object[key] === undefined || object[key] === null) delete object[key];
  }
  return object;
}

/**
 * Managers that started daemons and were not stopped with
 * stopAllProcesses. The native manager kills its daemons when it is
 * garbage-collected (as the Rust one does when dropped); an app that keeps
 * no reference to its manager expects its daemons to go on running, as
 * with the seed, so this reference keeps the manager until it is stopped.
 */
const liveManagers = new Set();

/**
 * Supervises plugin daemons: the seed's BackgroundProcessManager, plus
 * 'stateChange' events, logs and JSON-RPC calls.
 */
class BackgroundProcessManager extends EventEmitter {
  #native = new native.NativeManager();
  /** Configs as given, by name, for getProcessInfo. */
  #configs = new Map();
  /** Starts that failed before tend knew the name: name -> error text. */
  #rejected = new Map();
  #subscription = null;

  constructor() {
    super();
    this.on('newListener', (event) => {
      if (event === 'stateChange' && this.#subscription === null) {
        this.#subscription = this.#native.subscribe((change) =>
          this.emit('stateChange', withoutUndefined(change)),
        );
      }
    });
    this.on('removeListener', (event) => {
      if (event === 'stateChange' && this.listenerCount('stateChange') === 0 && this.#subscription) {
        this.#subscription.close();
        this.#subscription = null;
      }
    });
  }

  /** Starts a daemon; resolves once its socket accepts connections. */
  async startProcess(config) {
    const name = config && typeof config === 'object' ? config.pluginName : undefined;
    if (typeof name === 'string' && name !== '') {
      this.#configs.set(name, config);
      this.#rejected.delete(name);
    }
    let settings;
    try {
      settings = toNative(config);
      liveManagers.add(this);
      await this.#native.startProcess(settings);
    } catch (error) {
      if (typeof name === 'string' && this.#native.getState(name) == null) {
        this.#rejected.set(name, error.message);
      }
      throw error;
    }
  }

  /**
   * Stops a daemon (SIGTERM to its group, SIGKILL after the grace period)
   * and resolves when no member is left. Resolves at once for a name that
   * never started.
   */
  async stopProcess(pluginName) {
    if (this.#native.getState(pluginName) == null) return;
    await this.#native.stopProcess(pluginName);
  }

  /** Stops, then starts again with the config it last had. */
  async restartProcess(pluginName) {
    await this.#native.restartProcess(pluginName);
  }

  /** Stops every daemon in parallel; later starts are refused. */
  async stopAllProcesses() {
    await this.#native.stopAllProcesses();
    liveManagers.delete(this);
  }

  /** Whether the daemon is running (its socket accepted). */
  isRunning(pluginName) {
    return this.#native.isRunning(pluginName);
  }

  /** Its state, or undefined for a name never started. */
  getState(pluginName) {
    const state = this.#native.getState(pluginName);
    if (state != null) return state;
    return this.#rejected.has(pluginName) ? ProcessState.ERROR : undefined;
  }

  /** PID of its live incarnation, or undefined. */
  getPid(pluginName) {
    return this.#native.getPid(pluginName) ?? undefined;
  }

  /**
   * Everything known about the daemon, with its config as given; undefined
   * for a name never started.
   */
  getProcessInfo(pluginName) {
    const config = this.#configs.get(pluginName);
    const info = this.#native.getProcessInfo(pluginName);
    if (info) {
      withoutUndefined(info);
      info.config = config;
      return info;
    }
    if (!this.#rejected.has(pluginName)) return undefined;
    return {
      name: pluginName,
      state: ProcessState.ERROR,
      pid: undefined,
      failedHealthChecks: 0,
      restartAttempts: 0,
      lastError: this.#rejected.get(pluginName),
      config,
    };
  }

  /** Snapshots of every daemon tend runs, sorted by name. */
  list() {
    return this.#native.list().map((info) => {
      withoutUndefined(info);
      info.config = this.#configs.get(info.name);
      return info;
    });
  }

  /** The newest `lines` lines the daemon wrote to stdout and stderr. */
  logs(pluginName, lines = 100) {
    return this.#native.logs(pluginName, lines);
  }

  /**
   * Calls `listener(line)` for each line the daemon writes from now on;
   * returns a handle whose close() stops it. Does not keep Node alive.
   */
  followLogs(pluginName, listener) {
    return this.#native.followLogs(pluginName, listener);
  }

  /**
   * State changes from now on, as an async iterator; `break` out of the
   * loop to end it. A next() that waits keeps Node alive, as a pending
   * read does; the iterator does not otherwise.
   */
  events() {
    const queue = [];
    let wake = null;
    let done = false;
    const subscription = this.#native.subscribe((change) => {
      queue.push(withoutUndefined(change));
      if (wake) {
        wake();
        wake = null;
      }
    });
    const finish = () => {
      done = true;
      subscription.close();
      if (wake) {
        wake();
        wake = null;
      }
      return Promise.resolve({ value: undefined, done: true });
    };
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next() {
        while (queue.length === 0 && !done) {
          // Waiting for an event keeps Node alive, as a pending read
          // would; between next() calls the subscription does not.
          subscription.keepAlive(true);
          try {
            await new Promise((resolve) => {
              wake = resolve;
            });
          } finally {
            if (!done) subscription.keepAlive(false);
          }
        }
        if (queue.length > 0) return { value: queue.shift(), done: false };
        return { value: undefined, done: true };
      },
      return: finish,
      throw(error) {
        finish();
        return Promise.reject(error);
      },
    };
  }

  /**
   * A JSON-RPC 2.0 call to the daemon over its socket, on one persistent
   * connection per daemon; resolves with the result.
   */
  call(pluginName, method, params, options = {}) {
    return this.#native.call(pluginName, method, params ?? null, options.timeout);
  }

  /** A JSON-RPC notification (no reply). */
  notify(pluginName, method, params) {
    return this.#native.notify(pluginName, method, params ?? null);
  }

  /** Sends `event` to every daemon subscribed to it; returns how many. */
  publish(event, data = null) {
    return this.#native.publish(event, data);
  }

  /** Subscribes a daemon to named events (see publish). */
  subscribeDaemon(pluginName, events) {
    this.#native.subscribeDaemon(pluginName, events);
  }
}

/** One environment (Python venv or Node packages) per plugin. */
class PluginEnvironmentManager {
  #native;

  constructor(envsDir = PLUGIN_ENVS_DIR) {
    this.#native = new native.NativeEnvironmentManager(envsDir);
  }

  /** The envs root. */
  get root() {
    return this.#native.root();
  }

  /** The plugin's venv Python if it exists, else python3. */
  getPythonPath(pluginName) {
    return this.#native.getPythonPath(pluginName);
  }

  /** The plugin's environment directory. */
  getEnvDir(pluginName) {
    return this.#native.getEnvDir(pluginName);
  }

  /** The plugin's node_modules directory (for NODE_PATH). */
  getNodeModulesPath(pluginName) {
    return this.#native.getNodeModulesPath(pluginName);
  }

  /** Creates or reuses the plugin's venv and installs its requirements. */
  ensurePython(pluginName, pluginPath, requirements) {
    return this.#native.ensurePython(pluginName, pluginPath, requirements);
  }

  /** Installs or reuses the plugin's Node packages. */
  ensureNode(pluginName, pluginPath, packageJson = 'package.json') {
    return this.#native.ensureNode(pluginName, pluginPath, packageJson);
  }
}

module.exports = {
  BackgroundProcessManager,
  PluginEnvironmentManager,
  ProcessState,
  PLUGIN_TIMEOUTS,
  PLUGIN_ENVS_DIR,
};
