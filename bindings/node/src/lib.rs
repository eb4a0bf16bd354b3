//! Native half of the `tend` Node package: the Rust [`tend`] supervisor
//! exposed through N-API (napi-rs).
//!
//! The JavaScript half (`index.js`) gives it the seed's API: it checks the
//! config object's keys and types, keeps the config as given, turns
//! millisecond durations into the numbers this module takes, and wraps the
//! event callback in an `EventEmitter`. This module stays thin: every call
//! goes straight to a [`tend::BackgroundProcessManager`].
//!
//! Promises are settled from tasks on one multi-threaded tokio runtime
//! owned by this module (never Node's thread): a pending promise keeps
//! Node's event loop alive, as an unsettled socket read would, but nothing
//! else does — the event callback is unreferenced, and the runtime's
//! threads do not count for Node. The runtime is never shut down; when
//! Node exits, its threads end with the process and the daemons are
//! stopped by tend's guard process and the parent-death signal.

// The `#[napi]` attribute generates undocumented glue items (the class
// registration of each `impl`); every item written here is documented.
#![allow(missing_docs)]

use std::{
    path::Path,
    sync::LazyLock,
    time::{Duration, SystemTime},
};

use napi::{
    Env, JsFunction, JsObject,
    bindgen_prelude::ToNapiValue,
    threadsafe_function::{ErrorStrategy, ThreadsafeFunction, ThreadsafeFunctionCallMode},
};
use napi_derive::napi;
use tend::{BackgroundProcessConfig, HealthCheck, ProcessState};
use tokio::task::JoinHandle;

/// The runtime every promise of this module is settled from.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tend-node")
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime of the tend Node binding")
});

/// A JS `Error` carrying `message`.
fn js_error(message: impl Into<String>) -> napi::Error {
    napi::Error::from_reason(message.into())
}

/// The seed rejects a start after `stopAllProcesses` with this message;
/// apps match on it, so it is kept word for word.
fn start_error(error: tend::Error) -> napi::Error {
    match error {
        tend::Error::ShuttingDown(name) => js_error(format!(
            "Cannot start process during shutdown: {name:?} was not started"
        )),
        other => js_error(other.to_string()),
    }
}

/// Runs `future` on the runtime and returns a promise settled with its
/// outcome. `T` is converted on Node's thread when the promise settles.
fn promise<T, F>(env: &Env, future: F) -> napi::Result<JsObject>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = napi::Result<T>> + Send + 'static,
{
    let (deferred, promise) = env.create_deferred()?;
    RUNTIME.spawn(async move {
        match future.await {
            Ok(value) => deferred.resolve(move |_| Ok(value)),
            Err(error) => deferred.reject(error),
        }
    });
    Ok(promise)
}

fn duration_ms(ms: f64, key: &str) -> napi::Result<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| {
        js_error(format!(
            "{key} must be a number of milliseconds >= 0, not {ms}"
        ))
    })
}

fn unix_ms(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as f64)
        .unwrap_or(0.0)
}

/// Health-check settings, milliseconds.
#[napi(object)]
pub struct NativeHealthCheck {
    /// Time between two checks.
    pub interval: f64,
    /// How long one check may take.
    pub timeout: f64,
    /// Failures in a row that restart the daemon.
    pub retries: u32,
}

/// A config as `index.js` hands it over: checked for types, durations in
/// milliseconds, environment as ordered pairs.
#[napi(object)]
pub struct NativeConfig {
    /// `pluginName`.
    pub plugin_name: String,
    /// `command`.
    pub command: String,
    /// `args`.
    pub args: Vec<String>,
    /// `pluginPath`: the working directory.
    pub plugin_path: Option<String>,
    /// `socketPath`.
    pub socket_path: Option<String>,
    /// `envVars`, `[key, value]` pairs.
    pub env: Vec<Vec<String>>,
    /// `startupTimeout`.
    pub startup_timeout: Option<f64>,
    /// `shutdownGracePeriod`.
    pub shutdown_grace_period: Option<f64>,
    /// `healthcheck`.
    pub healthcheck: Option<NativeHealthCheck>,
    /// `maxRestartAttempts`.
    pub max_restart_attempts: Option<u32>,
    /// `restartDelay`.
    pub restart_delay: Option<f64>,
    /// `logFile` (beyond the seed).
    pub log_file: Option<String>,
}

impl NativeConfig {
    // Not a struct literal for HealthCheck: it may become
    // #[non_exhaustive], which allows only this from outside tend.
    #[allow(clippy::field_reassign_with_default)]
    fn to_tend(&self) -> napi::Result<BackgroundProcessConfig> {
        let mut config = BackgroundProcessConfig::new(&self.plugin_name, &self.command)
            .args(&self.args)
            .envs(self.env.iter().filter_map(|pair| match pair.as_slice() {
                [key, value] => Some((key, value)),
                _ => None,
            }));
        if let Some(path) = &self.plugin_path {
            config = config.plugin_path(path);
        }
        if let Some(path) = &self.socket_path {
            config = config.socket_path(path);
        }
        if let Some(ms) = self.startup_timeout {
            config = config.startup_timeout(duration_ms(ms, "startupTimeout")?);
        }
        if let Some(ms) = self.shutdown_grace_period {
            config = config.shutdown_grace_period(duration_ms(ms, "shutdownGracePeriod")?);
        }
        if let Some(check) = &self.healthcheck {
            let mut health = HealthCheck::default();
            health.interval = duration_ms(check.interval, "healthcheck.interval")?;
            health.timeout = duration_ms(check.timeout, "healthcheck.timeout")?;
            health.retries = check.retries;
            config = config.healthcheck(health);
        }
        if let Some(attempts) = self.max_restart_attempts {
            config = config.max_restart_attempts(attempts);
        }
        if let Some(ms) = self.restart_delay {
            config = config.restart_delay(duration_ms(ms, "restartDelay")?);
        }
        if let Some(path) = &self.log_file {
            config = config.log_file(path);
        }
        Ok(config)
    }
}

/// A snapshot of one daemon, as `getProcessInfo` returns it (`index.js`
/// adds `config`).
#[napi(object)]
pub struct NativeInfo {
    /// The daemon's name.
    pub name: String,
    /// Lower-case state.
    pub state: String,
    /// PID of the live incarnation.
    pub pid: Option<u32>,
    /// Failed health checks in a row.
    pub failed_health_checks: u32,
    /// Restarts in a row.
    pub restart_attempts: u32,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// When it became `running`, ms since the epoch.
    pub started_at: Option<f64>,
    /// How long it has been `running`, ms.
    pub uptime_ms: Option<f64>,
    /// How the previous incarnation ended.
    pub last_exit: Option<String>,
}

impl From<tend::ProcessInfo> for NativeInfo {
    fn from(info: tend::ProcessInfo) -> Self {
        NativeInfo {
            state: info.state.as_str().to_owned(),
            pid: info.pid,
            failed_health_checks: info.failed_health_checks,
            restart_attempts: info.restart_attempts,
            started_at: info.started_at.map(unix_ms),
            uptime_ms: info.uptime.map(|d| d.as_millis() as f64),
            last_exit: info.last_exit.map(|status| status.to_string()),
            last_error: info.last_error,
            name: info.name,
        }
    }
}

/// One state change.
#[napi(object)]
pub struct NativeEvent {
    /// The daemon's name.
    pub name: String,
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// Why, in words.
    pub reason: String,
    /// PID of the incarnation concerned.
    pub pid: Option<u32>,
    /// When, ms since the epoch.
    pub time: f64,
}

/// One line of daemon output.
#[napi(object)]
pub struct NativeLogLine {
    /// `stdout`, `stderr` (or another stream tend names).
    pub stream: String,
    /// The line, without its newline.
    pub text: String,
    /// When tend read it, ms since the epoch.
    pub time: f64,
}

/// The stream's lower-case name as tend serializes it ("stdout",
/// "stderr", and whatever streams tend adds), so a new stream needs no
/// change here.
fn stream_name(stream: tend::Stream) -> String {
    match serde_json::to_value(stream) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{stream:?}").to_lowercase(),
    }
}

impl From<tend::LogLine> for NativeLogLine {
    fn from(line: tend::LogLine) -> Self {
        NativeLogLine {
            stream: stream_name(line.stream),
            time: unix_ms(line.time),
            text: line.text,
        }
    }
}

/// Turns the Node-liveness of a subscription's callback on or off.
type KeepAlive = Box<dyn FnMut(&Env, bool) -> napi::Result<()>>;

/// A running forwarder of events or log lines to a JS callback; `close`
/// ends it.
#[napi]
pub struct NativeSubscription {
    task: Option<JoinHandle<()>>,
    keep_alive: Option<KeepAlive>,
}

#[napi]
impl NativeSubscription {
    fn new<T: ToNapiValue + 'static>(
        task: JoinHandle<()>,
        callback: ThreadsafeFunction<T, ErrorStrategy::Fatal>,
    ) -> Self {
        let mut callback = callback;
        NativeSubscription {
            task: Some(task),
            keep_alive: Some(Box::new(move |env, on| {
                if on {
                    callback.refer(env)
                } else {
                    callback.unref(env)
                }
            })),
        }
    }

    /// Whether the callback keeps Node alive (off by default). An async
    /// iterator turns it on while a `next()` waits, as a pending read
    /// would, so a program awaiting the next event does not exit under it.
    #[napi]
    pub fn keep_alive(&mut self, env: Env, on: bool) -> napi::Result<()> {
        match &mut self.keep_alive {
            Some(set) => set(&env, on),
            None => Ok(()),
        }
    }

    /// Stops forwarding.
    #[napi]
    pub fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Releases this handle's reference on the callback.
        self.keep_alive = None;
    }
}

impl Drop for NativeSubscription {
    fn drop(&mut self) {
        self.close();
    }
}

/// An unreferenced threadsafe callback: it does not keep Node alive
/// (see [`NativeSubscription::keep_alive`]).
fn weak_callback<T: ToNapiValue + 'static>(
    env: &Env,
    callback: JsFunction,
) -> napi::Result<ThreadsafeFunction<T, ErrorStrategy::Fatal>> {
    let mut callback: ThreadsafeFunction<T, ErrorStrategy::Fatal> =
        callback.create_threadsafe_function(0, |ctx| Ok(vec![ctx.value]))?;
    callback.unref(env)?;
    Ok(callback)
}

/// The manager, one per `BackgroundProcessManager` object of `index.js`.
#[napi]
pub struct NativeManager {
    inner: tend::BackgroundProcessManager,
}

#[napi]
impl NativeManager {
    /// A manager with tend's defaults (state directory, containment, guard).
    #[napi(constructor)]
    pub fn new() -> Self {
        NativeManager {
            inner: tend::BackgroundProcessManager::new(),
        }
    }

    /// Starts a daemon; the promise resolves once it is running.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn start_process(&self, env: Env, config: NativeConfig) -> napi::Result<JsObject> {
        let config = config.to_tend()?;
        let manager = self.inner.clone();
        promise(&env, async move {
            manager.start_process(config).await.map_err(start_error)
        })
    }

    /// Stops a daemon and its whole process group.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop_process(&self, env: Env, name: String) -> napi::Result<JsObject> {
        let manager = self.inner.clone();
        promise(&env, async move {
            manager
                .stop_process(&name)
                .await
                .map_err(|e| js_error(e.to_string()))
        })
    }

    /// Stops, then starts a daemon with the config it last had.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn restart_process(&self, env: Env, name: String) -> napi::Result<JsObject> {
        let manager = self.inner.clone();
        promise(&env, async move {
            manager.restart_process(&name).await.map_err(start_error)
        })
    }

    /// Stops every daemon and refuses later starts.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop_all_processes(&self, env: Env) -> napi::Result<JsObject> {
        let manager = self.inner.clone();
        promise(&env, async move {
            manager.stop_all_processes().await;
            Ok(())
        })
    }

    /// Whether the daemon is `running`.
    #[napi]
    pub fn is_running(&self, name: String) -> bool {
        self.inner.is_running(&name)
    }

    /// Lower-case state, `undefined` for an unknown name.
    #[napi]
    pub fn get_state(&self, name: String) -> Option<&'static str> {
        self.inner.state(&name).ok().map(ProcessState::as_str)
    }

    /// PID of the live incarnation.
    #[napi]
    pub fn get_pid(&self, name: String) -> Option<u32> {
        self.inner.pid(&name).ok().flatten()
    }

    /// A snapshot, `undefined` for an unknown name.
    #[napi]
    pub fn get_process_info(&self, name: String) -> Option<NativeInfo> {
        self.inner.process_info(&name).ok().map(NativeInfo::from)
    }

    /// Snapshots of every daemon, sorted by name.
    #[napi]
    pub fn list(&self) -> Vec<NativeInfo> {
        self.inner
            .list()
            .into_iter()
            .map(NativeInfo::from)
            .collect()
    }

    /// The newest `lines` lines of output.
    #[napi]
    pub fn logs(&self, name: String, lines: u32) -> napi::Result<Vec<NativeLogLine>> {
        let lines = self
            .inner
            .logs(&name, lines as usize)
            .map_err(|e| js_error(e.to_string()))?;
        Ok(lines.into_iter().map(NativeLogLine::from).collect())
    }

    /// Calls `callback(event)` for every state change from now on.
    #[napi]
    pub fn subscribe(&self, env: Env, callback: JsFunction) -> napi::Result<NativeSubscription> {
        let callback = weak_callback::<NativeEvent>(&env, callback)?;
        let handle = callback.clone();
        let mut events = self.inner.subscribe();
        let task = RUNTIME.spawn(async move {
            while let Some(event) = events.recv().await {
                let event = NativeEvent {
                    from: event.from.as_str().to_owned(),
                    to: event.to.as_str().to_owned(),
                    time: unix_ms(event.time),
                    pid: event.pid,
                    reason: event.reason,
                    name: event.name,
                };
                callback.call(event, ThreadsafeFunctionCallMode::NonBlocking);
            }
        });
        Ok(NativeSubscription::new(task, handle))
    }

    /// Calls `callback(line)` for every line the daemon writes from now on.
    #[napi]
    pub fn follow_logs(
        &self,
        env: Env,
        name: String,
        callback: JsFunction,
    ) -> napi::Result<NativeSubscription> {
        let mut lines = self
            .inner
            .follow_logs(&name)
            .map_err(|e| js_error(e.to_string()))?;
        let callback = weak_callback::<NativeLogLine>(&env, callback)?;
        let handle = callback.clone();
        let task = RUNTIME.spawn(async move {
            // Lines skipped by a follower that fell behind are skipped
            // here too; the follower ends with the manager.
            while let Some(line) = lines.recv().await {
                callback.call(
                    NativeLogLine::from(line),
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
            }
        });
        Ok(NativeSubscription::new(task, handle))
    }

    /// A JSON-RPC call to the daemon over its socket; resolves with the
    /// result, rejects with the daemon's error.
    #[napi(ts_return_type = "Promise<unknown>")]
    pub fn call(
        &self,
        env: Env,
        name: String,
        method: String,
        params: Option<serde_json::Value>,
        timeout_ms: Option<f64>,
    ) -> napi::Result<JsObject> {
        let client = self
            .inner
            .rpc_client(&name)
            .map_err(|e| js_error(e.to_string()))?;
        let timeout = timeout_ms
            .map(|ms| duration_ms(ms, "timeout"))
            .transpose()?;
        let params = params.unwrap_or(serde_json::Value::Null);
        promise(&env, async move {
            let reply = match timeout {
                Some(timeout) => client.call_with_timeout(&method, params, timeout).await,
                None => client.call(&method, params).await,
            };
            reply.map_err(|e| js_error(format!("{name}: {method}: {e}")))
        })
    }

    /// A JSON-RPC notification to the daemon (no reply).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn notify(
        &self,
        env: Env,
        name: String,
        method: String,
        params: Option<serde_json::Value>,
    ) -> napi::Result<JsObject> {
        let client = self
            .inner
            .rpc_client(&name)
            .map_err(|e| js_error(e.to_string()))?;
        let params = params.unwrap_or(serde_json::Value::Null);
        promise(&env, async move {
            client
                .notify(&method, params)
                .await
                .map_err(|e| js_error(format!("{name}: {method}: {e}")))
        })
    }

    /// Sends an event to every daemon subscribed to it; returns how many.
    #[napi]
    pub fn publish(&self, event: String, data: serde_json::Value) -> napi::Result<u32> {
        self.inner
            .publish(&event, data)
            .map(|n| n as u32)
            .map_err(|e| js_error(e.to_string()))
    }

    /// Nanoseconds per call of `is_running` and of `process_info` when
    /// called from Rust, `calls` times each, for the benchmark script
    /// (`bench.mjs`) to tell the binding's overhead from tend's. Not part
    /// of the package's API.
    #[napi(js_name = "_benchRustQueries")]
    pub fn bench_rust_queries(&self, name: String, calls: u32) -> Vec<f64> {
        let time = |query: &dyn Fn()| {
            let begin = std::time::Instant::now();
            for _ in 0..calls {
                query();
            }
            begin.elapsed().as_nanos() as f64 / f64::from(calls.max(1))
        };
        vec![
            time(&|| {
                std::hint::black_box(self.inner.is_running(&name));
            }),
            time(&|| {
                let _ = std::hint::black_box(self.inner.process_info(&name));
            }),
        ]
    }

    /// One start of `config` through the Rust API, timed in Rust (ms),
    /// then a stop: the baseline `bench.mjs` sets `startProcess` against,
    /// round for round. Not part of the package's API.
    #[napi(js_name = "_benchStartStop", ts_return_type = "Promise<number>")]
    pub fn bench_start_stop(&self, env: Env, config: NativeConfig) -> napi::Result<JsObject> {
        let config = config.to_tend()?;
        let manager = self.inner.clone();
        promise(&env, async move {
            let begin = std::time::Instant::now();
            let started = manager.start_process(config.clone()).await;
            let ms = begin.elapsed().as_secs_f64() * 1000.0;
            started.map_err(|e| js_error(e.to_string()))?;
            manager
                .stop_process(&config.name)
                .await
                .map_err(|e| js_error(e.to_string()))?;
            Ok(ms)
        })
    }

    /// Subscribes a daemon to named events.
    #[napi]
    pub fn subscribe_daemon(&self, name: String, events: Vec<String>) -> napi::Result<()> {
        self.inner
            .subscribe_daemon(&name, events)
            .map_err(|e| js_error(e.to_string()))
    }
}

impl Default for NativeManager {
    fn default() -> Self {
        Self::new()
    }
}

/// What `ensurePython` and `ensureNode` found or did.
#[napi(object)]
pub struct NativeEnsureOutcome {
    /// The interpreter (Python) or the `node_modules` directory (Node).
    pub path: String,
    /// Whether the environment was created by this call.
    pub created: bool,
    /// Whether pip or npm ran in this call.
    pub installed: bool,
}

/// One environment directory per plugin under a root.
#[napi]
pub struct NativeEnvironmentManager {
    inner: std::sync::Arc<tend::envs::PluginEnvironmentManager>,
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[napi]
impl NativeEnvironmentManager {
    /// A manager of environments under `root`.
    #[napi(constructor)]
    pub fn new(root: String) -> Self {
        NativeEnvironmentManager {
            inner: std::sync::Arc::new(tend::envs::PluginEnvironmentManager::new(root)),
        }
    }

    /// The envs root.
    #[napi]
    pub fn root(&self) -> String {
        path_string(self.inner.root())
    }

    /// `<root>/<name>/venv/bin/python` if it exists, else `python3`.
    #[napi]
    pub fn get_python_path(&self, name: String) -> String {
        path_string(&self.inner.python_path(&name))
    }

    /// `<root>/<name>`.
    #[napi]
    pub fn get_env_dir(&self, name: String) -> napi::Result<String> {
        self.inner
            .env_dir(&name)
            .map(|p| path_string(&p))
            .map_err(|e| js_error(e.to_string()))
    }

    /// `<root>/<name>/node/node_modules`.
    #[napi]
    pub fn get_node_modules_path(&self, name: String) -> napi::Result<String> {
        self.inner
            .node_modules_path(&name)
            .map(|p| path_string(&p))
            .map_err(|e| js_error(e.to_string()))
    }

    /// Builds (or reuses) the plugin's virtualenv.
    #[napi(ts_return_type = "Promise<NativeEnsureOutcome>")]
    pub fn ensure_python(
        &self,
        env: Env,
        name: String,
        plugin_path: String,
        requirements: Option<String>,
    ) -> napi::Result<JsObject> {
        let envs = self.inner.clone();
        promise(&env, async move {
            let outcome = envs
                .ensure_python(
                    &name,
                    Path::new(&plugin_path),
                    requirements.as_deref().map(Path::new),
                )
                .await
                .map_err(|e| js_error(e.to_string()))?;
            Ok(NativeEnsureOutcome {
                path: path_string(&outcome.path),
                created: outcome.created,
                installed: outcome.installed,
            })
        })
    }

    /// Installs (or reuses) the plugin's Node packages.
    #[napi(ts_return_type = "Promise<NativeEnsureOutcome>")]
    pub fn ensure_node(
        &self,
        env: Env,
        name: String,
        plugin_path: String,
        package_json: String,
    ) -> napi::Result<JsObject> {
        let envs = self.inner.clone();
        promise(&env, async move {
            let outcome = envs
                .ensure_node(&name, Path::new(&plugin_path), Path::new(&package_json))
                .await
                .map_err(|e| js_error(e.to_string()))?;
            Ok(NativeEnsureOutcome {
                path: path_string(&outcome.path),
                created: outcome.created,
                installed: outcome.installed,
            })
        })
    }
}

/// The directory tend keeps orphan records in by default.
#[napi]
pub fn default_state_dir() -> String {
    path_string(&tend::default_state_dir())
}
