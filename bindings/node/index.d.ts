// Types of the `tend` Node package: the seed's BackgroundProcessManager
// API, plus what tend adds (events, logs, JSON-RPC, environments).
import { EventEmitter } from 'node:events';

/** Where a daemon is in its life. */
export declare enum ProcessState {
  STARTING = 'starting',
  RUNNING = 'running',
  STOPPING = 'stopping',
  STOPPED = 'stopped',
  ERROR = 'error',
}

/** The seed's timing constants: milliseconds, or counts. */
export declare const PLUGIN_TIMEOUTS: {
  readonly BACKGROUND_PROCESS_STARTUP: 30000;
  readonly BACKGROUND_PROCESS_SHUTDOWN_GRACE_PERIOD: 5000;
  readonly BACKGROUND_PROCESS_HEALTH_CHECK_INTERVAL: 30000;
  readonly BACKGROUND_PROCESS_HEALTH_CHECK_TIMEOUT: 5000;
  readonly BACKGROUND_PROCESS_MAX_HEALTH_CHECK_FAILURES: 3;
  readonly BACKGROUND_PROCESS_MAX_RESTART_ATTEMPTS: 3;
  readonly BACKGROUND_PROCESS_RESTART_DELAY: 5000;
};

/**
 * Default root of PluginEnvironmentManager: $TEND_PLUGIN_ENVS_DIR, else
 * $XDG_DATA_HOME/tend/plugin-envs, else ~/.local/share/tend/plugin-envs.
 */
export declare const PLUGIN_ENVS_DIR: string;

/** Periodic health check over the daemon's socket (milliseconds). */
export interface HealthCheckConfig {
  /** Time between two checks. Default 30000. */
  interval: number;
  /** How long one check may take. Default 5000. */
  timeout: number;
  /** Failed checks in a row that restart the daemon. Default 3. */
  retries: number;
}

/** How to run and supervise one daemon; durations in milliseconds. */
export interface BackgroundProcessConfig {
  /** Unique name: [A-Za-z0-9._-], at most 64 bytes. */
  pluginName: string;
  /** Working directory of the daemon. */
  pluginPath?: string;
  /** Program to run (looked up in PATH without a '/'); never a shell. */
  command: string;
  /** Its arguments. */
  args?: string[];
  /** Absolute path of the Unix socket it listens on (exported as SOCKET_PATH). */
  socketPath?: string;
  /** Extra environment variables; an undefined value is left out. */
  envVars?: Record<string, string | undefined>;
  /** Time from spawn until the socket accepts. Default 30000. */
  startupTimeout?: number;
  /** Time between SIGTERM and SIGKILL. Default 5000. */
  shutdownGracePeriod?: number;
  /** Health checks; none when left out. */
  healthcheck?: HealthCheckConfig;
  /** Restarts in a row before giving up. Default 3. */
  maxRestartAttempts?: number;
  /** Delay before the first restart, doubling per attempt. Default 5000. */
  restartDelay?: number;
  /** File the daemon's stdout and stderr are appended to (beyond the seed). */
  logFile?: string;
}

/** A snapshot of one daemon. */
export interface ProcessInfo {
  name: string;
  state: ProcessState;
  /** PID of the live incarnation. */
  pid?: number;
  /** Failed health checks in a row. */
  failedHealthChecks: number;
  /** Restarts in a row since it last ran stably. */
  restartAttempts: number;
  /** Why it last failed. */
  lastError?: string;
  /** The config as given to startProcess (also after a failed start). */
  config?: BackgroundProcessConfig;
  /** When it became running, ms since the epoch. */
  startedAt?: number;
  /** How long it has been running, ms. */
  uptimeMs?: number;
  /** How the previous incarnation ended ("exited with code 1"). */
  lastExit?: string;
}

/** One state change, as 'stateChange' and events() deliver it. */
export interface StateChange {
  name: string;
  from: ProcessState;
  to: ProcessState;
  /** Why, in words ("ready", "exited with code 1", "stop requested"). */
  reason: string;
  pid?: number;
  /** When, ms since the epoch. */
  time: number;
}

/** One line of daemon output. */
export interface LogLine {
  /** The daemon's pipe, or 'tend' for a marker line tend writes itself. */
  stream: 'stdout' | 'stderr' | 'tend';
  text: string;
  /** When tend read it, ms since the epoch. */
  time: number;
}

/** A running subscription; close() ends it. */
export interface Subscription {
  close(): void;
}

/**
 * Supervises plugin daemons on tend. Emits 'stateChange' (StateChange)
 * for every state change while a listener is attached; listeners do not
 * keep Node alive.
 */
export declare class BackgroundProcessManager extends EventEmitter {
  constructor();
  /**
   * Starts a daemon; resolves once its socket accepts a connection. Rejects
   * with the reason (its stderr tail included); after stopAllProcesses,
   * with "Cannot start process during shutdown".
   */
  startProcess(config: BackgroundProcessConfig): Promise<void>;
  /** Stops a daemon with its whole process group; resolves at once for a name never started. */
  stopProcess(pluginName: string): Promise<void>;
  /** Stops, then starts a daemon with the config it last had. */
  restartProcess(pluginName: string): Promise<void>;
  /** Stops every daemon in parallel; later starts are refused. */
  stopAllProcesses(): Promise<void>;
  isRunning(pluginName: string): boolean;
  /** undefined for a name never started. */
  getState(pluginName: string): ProcessState | undefined;
  getPid(pluginName: string): number | undefined;
  /** undefined for a name never started. */
  getProcessInfo(pluginName: string): ProcessInfo | undefined;
  /** Snapshots of every daemon tend runs, sorted by name. */
  list(): ProcessInfo[];
  /** The newest lines of output (default 100). Throws for an unknown name. */
  logs(pluginName: string, lines?: number): LogLine[];
  /** Lines written from now on; does not keep Node alive. */
  followLogs(pluginName: string, listener: (line: LogLine) => void): Subscription;
  /**
   * State changes from now on. A next() that waits keeps Node alive, as a
   * pending read does; leaving a for-await loop closes the iterator.
   */
  events(): AsyncIterableIterator<StateChange>;
  /** A JSON-RPC 2.0 call over the daemon's socket; resolves with the result. */
  call(pluginName: string, method: string, params?: unknown, options?: { timeout?: number }): Promise<unknown>;
  /** A JSON-RPC notification. */
  notify(pluginName: string, method: string, params?: unknown): Promise<void>;
  /** Sends an event to the daemons subscribed to it; returns how many. */
  publish(event: string, data?: unknown): number;
  /** Subscribes a daemon to named events. */
  subscribeDaemon(pluginName: string, events: string[]): void;

  on(event: 'stateChange', listener: (change: StateChange) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'stateChange', listener: (change: StateChange) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** What ensurePython and ensureNode found or did. */
export interface EnsureOutcome {
  /** The venv's Python, or the node_modules directory. */
  path: string;
  created: boolean;
  installed: boolean;
}

/** One environment (Python venv, Node packages) per plugin under a root. */
export declare class PluginEnvironmentManager {
  constructor(envsDir?: string);
  readonly root: string;
  /** <root>/<name>/venv/bin/python if it exists, else python3. */
  getPythonPath(pluginName: string): string;
  getEnvDir(pluginName: string): string;
  getNodeModulesPath(pluginName: string): string;
  /** Creates (or reuses) the venv and installs the requirements file. */
  ensurePython(pluginName: string, pluginPath: string, requirements?: string): Promise<EnsureOutcome>;
  /** Installs (or reuses) the plugin's packages from its package.json. */
  ensureNode(pluginName: string, pluginPath: string, packageJson?: string): Promise<EnsureOutcome>;
}
