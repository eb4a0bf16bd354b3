//! Native half of the `tend` Python package (`tend._native`): the Rust
//! [`tend`] supervisor exposed through PyO3.
//!
//! Coroutine-like methods return asyncio awaitables made by
//! `pyo3-async-runtimes`: the work runs on its tokio runtime, and the
//! result is handed to the caller's event loop with
//! `call_soon_threadsafe`, so the loop never blocks. Queries (`state`,
//! `pid`, `process_info`, ...) read a snapshot tend publishes and never
//! wait for a daemon; they are safe from any thread. The runtime is never
//! shut down: when the interpreter exits or is killed, its threads end
//! with the process and the daemons are stopped by tend's guard process
//! and the parent-death signal.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use pyo3::{
    create_exception,
    exceptions::{PyException, PyStopAsyncIteration, PyValueError},
    prelude::*,
    types::PyDict,
};
use pyo3_async_runtimes::tokio::future_into_py;
use tend::{BackgroundProcessConfig, HealthCheck, ProcessState};

create_exception!(
    _native,
    TendError,
    PyException,
    "A tend operation failed; the message names the daemon and the reason."
);

/// A `TendError` for a failed start. The seed's message for a start after
/// `stop_all_processes` is kept word for word: apps match on it.
fn start_error(error: tend::Error) -> PyErr {
    match error {
        tend::Error::ShuttingDown(name) => TendError::new_err(format!(
            "Cannot start process during shutdown: {name:?} was not started"
        )),
        other => TendError::new_err(other.to_string()),
    }
}

fn tend_error(error: impl ToString) -> PyErr {
    TendError::new_err(error.to_string())
}

fn seconds(value: f64, key: &str, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "start_process({name:?}): {key} must be a number of seconds >= 0, not {value}"
        ))
    })
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads `{"interval": s, "timeout": s, "retries": n}`; missing keys take
/// tend's defaults, unknown keys are refused.
fn healthcheck(dict: &Bound<'_, PyDict>, name: &str) -> PyResult<HealthCheck> {
    let mut check = HealthCheck::default();
    for (key, value) in dict.iter() {
        let key: String = key.extract()?;
        match key.as_str() {
            "interval" => {
                check.interval = seconds(value.extract()?, "healthcheck['interval']", name)?
            }
            "timeout" => check.timeout = seconds(value.extract()?, "healthcheck['timeout']", name)?,
            "retries" => check.retries = value.extract()?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "start_process({name:?}): unknown healthcheck key {other:?}; the keys are interval, timeout, retries"
                )));
            }
        }
    }
    Ok(check)
}

/// A snapshot of one daemon, as `process_info` returns it.
#[pyclass(frozen, get_all, module = "tend")]
pub struct ProcessInfo {
    /// The daemon's name.
    name: String,
    /// Lower-case state: starting, running, stopping, stopped, error.
    state: &'static str,
    /// PID of the live incarnation.
    pid: Option<u32>,
    /// Failed health checks in a row.
    failed_health_checks: u32,
    /// Restarts in a row since it last ran stably.
    restart_attempts: u32,
    /// Why it last failed.
    last_error: Option<String>,
    /// When it became running, seconds since the epoch.
    started_at: Option<f64>,
    /// How long it has been running, seconds.
    uptime: Option<f64>,
    /// How the previous incarnation ended ("exited with code 1").
    last_exit: Option<String>,
}

#[pymethods]
impl ProcessInfo {
    fn __repr__(&self) -> String {
        format!(
            "ProcessInfo(name={:?}, state={:?}, pid={:?}, failed_health_checks={}, restart_attempts={}, last_error={:?})",
            self.name,
            self.state,
            self.pid,
            self.failed_health_checks,
            self.restart_attempts,
            self.last_error
        )
    }
}

impl From<tend::ProcessInfo> for ProcessInfo {
    fn from(info: tend::ProcessInfo) -> Self {
        ProcessInfo {
            state: info.state.as_str(),
            pid: info.pid,
            failed_health_checks: info.failed_health_checks,
            restart_attempts: info.restart_attempts,
            started_at: info.started_at.map(unix_seconds),
            uptime: info.uptime.map(|d| d.as_secs_f64()),
            last_exit: info.last_exit.map(|status| status.to_string()),
            last_error: info.last_error,
            name: info.name,
        }
    }
}

/// One state change.
#[pyclass(frozen, get_all, module = "tend")]
pub struct ProcessEvent {
    /// The daemon's name.
    name: String,
    /// The state before.
    from_state: &'static str,
    /// The state after.
    to_state: &'static str,
    /// Why, in words ("ready", "exited with code 1", "stop requested").
    reason: String,
    /// PID of the incarnation concerned.
    pid: Option<u32>,
    /// When, seconds since the epoch.
    time: f64,
}

#[pymethods]
impl ProcessEvent {
    fn __repr__(&self) -> String {
        format!(
            "ProcessEvent(name={:?}, from_state={:?}, to_state={:?}, reason={:?}, pid={:?})",
            self.name, self.from_state, self.to_state, self.reason, self.pid
        )
    }
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

/// One line of daemon output.
#[pyclass(frozen, get_all, module = "tend")]
pub struct LogLine {
    /// "stdout", "stderr" (or another stream tend names).
    stream: String,
    /// The line, without its newline.
    text: String,
    /// When tend read it, seconds since the epoch.
    time: f64,
}

#[pymethods]
impl LogLine {
    fn __repr__(&self) -> String {
        format!("LogLine(stream={:?}, text={:?})", self.stream, self.text)
    }
}

/// State changes from the moment `events()` was called: `async for`.
#[pyclass(module = "tend")]
pub struct EventIterator {
    events: Arc<tokio::sync::Mutex<tend::Subscription>>,
}

#[pymethods]
impl EventIterator {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = Arc::clone(&self.events);
        future_into_py(py, async move {
            let event = events.lock().await.recv().await;
            let event = event.ok_or_else(|| PyStopAsyncIteration::new_err(()))?;
            Ok(ProcessEvent {
                from_state: event.from.as_str(),
                to_state: event.to.as_str(),
                time: unix_seconds(event.time),
                pid: event.pid,
                reason: event.reason,
                name: event.name,
            })
        })
    }
}

/// Supervises plugin daemons.
#[pyclass(frozen, subclass, module = "tend")]
pub struct BackgroundProcessManager {
    inner: tend::BackgroundProcessManager,
}

#[pymethods]
impl BackgroundProcessManager {
    #[new]
    fn new() -> Self {
        BackgroundProcessManager {
            inner: tend::BackgroundProcessManager::new(),
        }
    }

    /// Starts a daemon; the awaitable completes once it is running.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (
        *,
        plugin_name,
        command,
        args = None,
        plugin_path = None,
        socket_path = None,
        env = None,
        startup_timeout = None,
        shutdown_grace_period = None,
        healthcheck = None,
        max_restart_attempts = None,
        restart_delay = None,
        log_file = None,
    ))]
    fn start_process<'py>(
        &self,
        py: Python<'py>,
        plugin_name: String,
        command: PathBuf,
        args: Option<Vec<OsString>>,
        plugin_path: Option<PathBuf>,
        socket_path: Option<PathBuf>,
        env: Option<HashMap<OsString, OsString>>,
        startup_timeout: Option<f64>,
        shutdown_grace_period: Option<f64>,
        healthcheck: Option<Bound<'py, PyDict>>,
        max_restart_attempts: Option<u32>,
        restart_delay: Option<f64>,
        log_file: Option<PathBuf>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let name = plugin_name.clone();
        let mut config =
            BackgroundProcessConfig::new(plugin_name, command).args(args.unwrap_or_default());
        if let Some(env) = env {
            config = config.envs(env);
        }
        if let Some(path) = plugin_path {
            config = config.plugin_path(path);
        }
        if let Some(path) = socket_path {
            config = config.socket_path(path);
        }
        if let Some(s) = startup_timeout {
            config = config.startup_timeout(seconds(s, "startup_timeout", &name)?);
        }
        if let Some(s) = shutdown_grace_period {
            config = config.shutdown_grace_period(seconds(s, "shutdown_grace_period", &name)?);
        }
        if let Some(dict) = healthcheck {
            config = config.healthcheck(self::healthcheck(&dict, &name)?);
        }
        if let Some(n) = max_restart_attempts {
            config = config.max_restart_attempts(n);
        }
        if let Some(s) = restart_delay {
            config = config.restart_delay(seconds(s, "restart_delay", &name)?);
        }
        if let Some(path) = log_file {
            config = config.log_file(path);
        }
        let manager = self.inner.clone();
        future_into_py(py, async move {
            manager.start_process(config).await.map_err(start_error)
        })
    }

    /// Stops a daemon with its whole process group (SIGTERM, then SIGKILL
    /// after its grace period); completes when no member is left.
    fn stop_process<'py>(
        &self,
        py: Python<'py>,
        plugin_name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let manager = self.inner.clone();
        future_into_py(py, async move {
            manager.stop_process(&plugin_name).await.map_err(tend_error)
        })
    }

    /// Stops, then starts a daemon with the config it last had.
    fn restart_process<'py>(
        &self,
        py: Python<'py>,
        plugin_name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let manager = self.inner.clone();
        future_into_py(py, async move {
            manager
                .restart_process(&plugin_name)
                .await
                .map_err(start_error)
        })
    }

    /// Stops every daemon in parallel; later starts are refused.
    fn stop_all_processes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let manager = self.inner.clone();
        future_into_py(py, async move {
            manager.stop_all_processes().await;
            Ok(())
        })
    }

    /// Whether the daemon is running (its socket accepted).
    fn is_running(&self, plugin_name: &str) -> bool {
        self.inner.is_running(plugin_name)
    }

    /// Lower-case state, `None` for a name never started.
    fn state(&self, plugin_name: &str) -> Option<&'static str> {
        self.inner.state(plugin_name).ok().map(ProcessState::as_str)
    }

    /// PID of the live incarnation.
    fn pid(&self, plugin_name: &str) -> Option<u32> {
        self.inner.pid(plugin_name).ok().flatten()
    }

    /// A snapshot, `None` for a name never started.
    fn process_info(&self, py: Python<'_>, plugin_name: &str) -> Option<ProcessInfo> {
        // Reads the daemon's cgroup files: without the GIL.
        py.allow_threads(|| self.inner.process_info(plugin_name).ok())
            .map(ProcessInfo::from)
    }

    /// Snapshots of every daemon, sorted by name.
    fn list(&self, py: Python<'_>) -> Vec<ProcessInfo> {
        py.allow_threads(|| self.inner.list())
            .into_iter()
            .map(ProcessInfo::from)
            .collect()
    }

    /// The newest `lines` lines the daemon wrote to stdout and stderr.
    #[pyo3(signature = (plugin_name, lines = 100))]
    fn logs(&self, plugin_name: &str, lines: usize) -> PyResult<Vec<LogLine>> {
        let lines = self.inner.logs(plugin_name, lines).map_err(tend_error)?;
        Ok(lines
            .into_iter()
            .map(|line| LogLine {
                stream: stream_name(line.stream),
                time: unix_seconds(line.time),
                text: line.text,
            })
            .collect())
    }

    /// State changes from now on, as an async iterator.
    fn events(&self) -> EventIterator {
        EventIterator {
            events: Arc::new(tokio::sync::Mutex::new(self.inner.subscribe())),
        }
    }

    /// A JSON-RPC call with params and result as JSON text (`tend.
    /// BackgroundProcessManager.call` wraps it with `json`).
    #[pyo3(signature = (plugin_name, method, params_json, timeout = None))]
    fn _call_json<'py>(
        &self,
        py: Python<'py>,
        plugin_name: String,
        method: String,
        params_json: &str,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params: serde_json::Value = serde_json::from_str(params_json)
            .map_err(|e| PyValueError::new_err(format!("params are not JSON: {e}")))?;
        let client = self.inner.rpc_client(&plugin_name).map_err(tend_error)?;
        let timeout = timeout
            .map(|s| seconds(s, "timeout", &plugin_name))
            .transpose()?;
        future_into_py(py, async move {
            let reply = match timeout {
                Some(timeout) => client.call_with_timeout(&method, params, timeout).await,
                None => client.call(&method, params).await,
            };
            reply
                .map(|value| value.to_string())
                .map_err(|e| TendError::new_err(format!("{plugin_name}: {method}: {e}")))
        })
    }
}

/// Nanoseconds per call of `is_running` and `process_info` of `manager`
/// for `name` when called from Rust, `calls` times each: the baseline that
/// `bench.py` sets the binding's queries against. Not part of the API.
#[pyfunction]
fn _bench_rust_queries(
    py: Python<'_>,
    manager: &BackgroundProcessManager,
    name: String,
    calls: u32,
) -> (f64, f64) {
    let manager = &manager.inner;
    py.allow_threads(|| {
        let time = |query: &dyn Fn()| {
            let begin = std::time::Instant::now();
            for _ in 0..calls {
                query();
            }
            begin.elapsed().as_nanos() as f64 / f64::from(calls.max(1))
        };
        let is_running = time(&|| {
            std::hint::black_box(manager.is_running(&name));
        });
        let process_info = time(&|| {
            let _ = std::hint::black_box(manager.process_info(&name));
        });
        (is_running, process_info)
    })
}

/// One start of `command` by `manager` through the Rust API, timed in
/// Rust (ms), then a stop; blocks the calling thread. The baseline
/// `bench.py` sets `start_process` against, round for round. Not part of
/// the API.
#[pyfunction]
fn _bench_rust_start_stop(
    py: Python<'_>,
    manager: &BackgroundProcessManager,
    command: PathBuf,
    args: Vec<OsString>,
    socket_path: PathBuf,
) -> PyResult<f64> {
    let manager = &manager.inner;
    let config = BackgroundProcessConfig::new("rust-baseline", command)
        .args(args)
        .socket_path(socket_path);
    py.allow_threads(|| {
        pyo3_async_runtimes::tokio::get_runtime().block_on(async {
            let begin = std::time::Instant::now();
            let started = manager.start_process(config.clone()).await;
            let ms = begin.elapsed().as_secs_f64() * 1000.0;
            started.map_err(tend_error)?;
            manager
                .stop_process(&config.name)
                .await
                .map_err(tend_error)?;
            Ok(ms)
        })
    })
}

/// The directory tend keeps orphan records in by default.
#[pyfunction]
fn default_state_dir() -> PathBuf {
    tend::default_state_dir()
}

/// The `tend._native` module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BackgroundProcessManager>()?;
    m.add_class::<ProcessInfo>()?;
    m.add_class::<ProcessEvent>()?;
    m.add_class::<LogLine>()?;
    m.add_class::<EventIterator>()?;
    m.add("TendError", m.py().get_type::<TendError>())?;
    m.add_function(wrap_pyfunction!(default_state_dir, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_rust_queries, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_rust_start_stop, m)?)?;
    Ok(())
}
