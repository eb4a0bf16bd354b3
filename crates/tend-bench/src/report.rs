//! The results of a run: settings, summaries, the targets of issue 6 with
//! a verdict each per containment, as JSON and as markdown; every
//! supervised figure has a column per containment next to the raw one.

use std::{collections::BTreeMap, fmt::Write};

use serde::Serialize;

use crate::{
    BenchContainment, RunArgs,
    cli_path::CliRow,
    manager_role::LatencySamples,
    stats::{Summary, summarize},
    sys::Machine,
};

/// What a run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `--smoke` was given.
    pub smoke: bool,
    /// Latency rounds (each: raw and supervised start, crash, stop).
    pub reps: usize,
    /// Stops of the SIGTERM-ignoring daemon.
    pub stubborn_reps: usize,
    /// Daemon counts for the scale and CLI figures.
    pub sizes: Vec<usize>,
    /// Idle window for the CPU figure, s.
    pub idle_secs: u64,
    /// Health-check interval during the idle window, ms.
    pub health_ms: u64,
    /// Grace period of the SIGTERM-ignoring daemon, ms.
    pub grace_ms: u64,
    /// `tend status --json` calls timed per size.
    pub status_reps: usize,
}

impl Settings {
    /// The settings for `args`: smoke or full sizes, then overrides.
    pub fn from_args(args: &RunArgs) -> Self {
        let (reps, sizes, idle_secs, stubborn_reps, status_reps) = if args.smoke {
            (20, vec![10], 1, 3, 5)
        } else {
            (300, vec![10, 100, 1000], 60, 20, 30)
        };
        Settings {
            smoke: args.smoke,
            reps: args.reps.unwrap_or(reps).max(1),
            stubborn_reps,
            sizes: args.sizes.clone().unwrap_or(sizes),
            idle_secs: args.idle_secs.unwrap_or(idle_secs),
            health_ms: 1000,
            grace_ms: args.grace_ms,
            status_reps,
        }
    }
}

/// Figures for one size: the raw baseline and tend under each
/// containment.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    /// Number of daemons.
    pub n: usize,
    /// Raw: first spawn → last daemon listening (mean of the raw runs).
    pub raw_all_listening_ms: f64,
    /// Each raw run, in order: one before the first supervised run and one
    /// after each.
    pub raw_all_listening_runs_ms: Vec<f64>,
    /// Raw: time to issue the n spawn calls (mean).
    pub raw_spawn_calls_ms: f64,
    /// Raw: SIGTERM to all → all reaped (mean of the raw runs).
    pub raw_stop_all_ms: f64,
    /// Each raw run's stop all, in order.
    pub raw_stop_all_runs_ms: Vec<f64>,
    /// CPU of one plain connect-and-close health check, raw, µs.
    pub raw_check_cpu_us: f64,
    /// What n plain checks per interval would cost, % of one core: the
    /// floor under `idle_cpu_pct`.
    pub raw_idle_floor_pct: f64,
    /// tend, one entry per containment that completed.
    pub tend: Vec<TendScaleRow>,
    /// tend under the first containment with the daemons on TCP ports,
    /// ready by tcp and checked by TCP connects, if that run completed.
    pub tend_tcp: Option<TendScaleRow>,
}

impl ScaleRow {
    /// tend's figures under `containment`, if that run completed.
    pub fn under(&self, containment: BenchContainment) -> Option<&TendScaleRow> {
        self.tend.iter().find(|t| t.requested == containment)
    }
}

/// tend's figures for one size under one containment.
#[derive(Debug, Clone, Serialize)]
pub struct TendScaleRow {
    /// The containment asked for.
    pub requested: BenchContainment,
    /// The containment the manager reported in force.
    pub in_force: Option<String>,
    /// First `start_process` → the last one returned.
    pub all_running_ms: f64,
    /// First `start_process` → the last daemon listened.
    pub last_listen_ms: f64,
    /// Last daemon listened → last `Running`.
    pub last_running_after_last_listen_ms: f64,
    /// All running / raw all listening (the size's raw mean).
    pub start_ratio: f64,
    /// Manager CPU spent starting the n daemons, ms.
    pub start_cpu_ms: f64,
    /// Manager RSS before any start, KiB.
    pub rss_idle_kib: u64,
    /// Manager RSS with all running, KiB.
    pub rss_running_kib: u64,
    /// Manager RSS after the idle window, KiB.
    pub rss_after_idle_kib: u64,
    /// Manager peak RSS, KiB.
    pub hwm_kib: u64,
    /// (RSS running − RSS idle) / n, KiB.
    pub rss_per_daemon_kib: f64,
    /// Length of the idle window, s.
    pub idle_secs: f64,
    /// Manager CPU over the idle window, % of one core.
    pub idle_cpu_pct: f64,
    /// Daemons still `Running` after the window.
    pub running_after_idle: usize,
    /// Restarts counted during the window.
    pub restarts: u64,
    /// Failed health checks counted at the end of the window.
    pub failed_health_checks: u64,
    /// `stop_all_processes` duration.
    pub stop_all_ms: f64,
    /// Manager CPU spent in `stop_all_processes`, ms.
    pub stop_all_cpu_ms: f64,
    /// `stop_all_processes` / raw stop all (the size's raw mean).
    pub stop_all_over_raw: f64,
    /// Daemons not `Stopped` after `stop_all_processes`.
    pub not_stopped: usize,
    /// `manager.list()` with all running.
    pub list: Option<Summary>,
}

/// The CLI section: rows, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct CliSection {
    /// One row per size.
    pub rows: Vec<CliRow>,
    /// Why the CLI figures were skipped, if they were.
    pub skipped: Option<String>,
}

/// One target of the issue and how this run did.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Item number in the issue.
    pub item: String,
    /// What is measured.
    pub what: String,
    /// The target, in words.
    pub target: String,
    /// The measured value, in words.
    pub measured: String,
    /// Met, missed, or not measured in this run.
    pub met: Option<bool>,
}

/// tend's latency figures and verdicts under one containment.
#[derive(Debug, Clone, Serialize)]
pub struct ContainmentResults {
    /// The containment asked for.
    pub requested: BenchContainment,
    /// The containment the manager reported in force.
    pub in_force: Option<String>,
    /// Latency summaries by series name (`tend_*`, see `TendSeries`).
    pub latency: BTreeMap<String, Summary>,
    /// The targets under this containment.
    pub targets: Vec<Target>,
}

impl ContainmentResults {
    /// The column heading: the containment, flagged if another was in
    /// force.
    fn label(&self) -> String {
        match self.in_force.as_deref() {
            Some(f) if f == self.requested.name() => f.to_owned(),
            Some(f) => format!("{} (**{f} in force**)", self.requested),
            None => format!("{} (never started)", self.requested),
        }
    }
}

/// The results of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Start of the run, Unix seconds.
    pub started_unix: u64,
    /// Duration of the run, s.
    pub wall_secs: f64,
    /// The machine.
    pub machine: Machine,
    /// Load averages before the run.
    pub load_before: [f64; 3],
    /// Load averages after the run.
    pub load_after: [f64; 3],
    /// Average busy CPUs during the run, this run included.
    pub busy_cpus: f64,
    /// The settings.
    pub settings: Settings,
    /// Raw latency summaries by series name (see `RawSamples`).
    pub latency: BTreeMap<String, Summary>,
    /// tend's latency and verdicts, per containment in the order measured.
    pub containments: Vec<ContainmentResults>,
    /// Scale figures by size.
    pub scale: Vec<ScaleRow>,
    /// CLI figures by size (tend's default containment).
    pub cli: CliSection,
    /// Anything unusual: skipped sizes, leftover processes.
    pub notes: Vec<String>,
}

/// Everything [`Results::new`] needs.
pub struct Inputs<'a> {
    pub started_unix: u64,
    pub wall_secs: f64,
    pub machine: Machine,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub busy_cpus: f64,
    pub settings: Settings,
    pub containments: Vec<BenchContainment>,
    pub samples: &'a LatencySamples,
    pub scale: Vec<ScaleRow>,
    pub cli: Result<Vec<CliRow>, String>,
    pub notes: Vec<String>,
}

/// Latency table rows: label, raw series, tend series.
const LATENCY_ROWS: &[(&str, Option<&str>, &str)] = &[
    (
        "start: spawn → daemon's `main`",
        Some("raw_spawn_to_exec"),
        "tend_spawn_to_exec",
    ),
    (
        "start: spawn → `listen()`",
        Some("raw_spawn_to_listen"),
        "tend_spawn_to_listen",
    ),
    (
        "start: spawn → daemon's `main`, raw also via fork+exec",
        Some("raw_fork_spawn_to_exec"),
        "tend_spawn_to_exec",
    ),
    (
        "start: spawn → `listen()`, raw also via fork+exec",
        Some("raw_fork_spawn_to_listen"),
        "tend_spawn_to_listen",
    ),
    (
        "start: `listen()` → `Running` event (readiness notice)",
        None,
        "tend_listen_to_running",
    ),
    (
        "start: `Running` event → `start_process` returns",
        None,
        "tend_running_to_return",
    ),
    (
        "start: whole (raw: connect loop, tend: `start_process`)",
        Some("raw_spawn_to_accept"),
        "tend_start_total",
    ),
    (
        "crash: SIGKILL → new daemon's `main`",
        Some("raw_kill_to_exec"),
        "tend_kill_to_exec",
    ),
    (
        "crash: SIGKILL → new `listen()`",
        Some("raw_kill_to_listen"),
        "tend_kill_to_listen",
    ),
    (
        "crash: SIGKILL → `Running` (raw: → `listen()`)",
        Some("raw_kill_to_listen"),
        "tend_kill_to_running",
    ),
    (
        "crash: new `listen()` → `Running`",
        None,
        "tend_crash_listen_to_running",
    ),
    (
        "stop: request → returned (raw: SIGTERM → reaped)",
        Some("raw_stop"),
        "tend_stop_total",
    ),
    (
        "stop: daemon exited → returned (raw: → reaped)",
        Some("raw_stop_after_exit"),
        "tend_stop_after_exit",
    ),
    (
        "stop: daemon exited → `Stopped` event",
        None,
        "tend_stopped_event_after_exit",
    ),
    (
        "stop, SIGTERM ignored: returned − grace period",
        None,
        "tend_stubborn_over_grace",
    ),
    (
        "stop, SIGTERM ignored: exited (SIGKILL) → returned",
        None,
        "tend_stubborn_after_exit",
    ),
];

impl Results {
    /// Summarises the inputs and judges the targets.
    pub fn new(inputs: Inputs<'_>) -> Self {
        let latency = summaries(&inputs.samples.raw);
        let grace_ns = inputs.settings.grace_ms as i64 * 1_000_000;
        let containments = inputs
            .containments
            .iter()
            .map(|&requested| {
                let samples = inputs
                    .samples
                    .tend
                    .iter()
                    .find(|t| t.requested == requested);
                let mut latency = samples.map_or_else(BTreeMap::new, |t| summaries(&t.series));
                let over_grace: Vec<i64> = samples
                    .map(|t| {
                        t.series
                            .tend_stubborn_stop_total
                            .iter()
                            .map(|t| t - grace_ns)
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(summary) = summarize(&over_grace) {
                    latency.insert("tend_stubborn_over_grace".to_owned(), summary);
                }
                ContainmentResults {
                    requested,
                    in_force: samples.and_then(|t| t.in_force.clone()),
                    latency,
                    targets: Vec::new(),
                }
            })
            .collect();
        let (cli, skipped) = match inputs.cli {
            Ok(rows) => (rows, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        let mut results = Results {
            started_unix: inputs.started_unix,
            wall_secs: inputs.wall_secs,
            machine: inputs.machine,
            load_before: inputs.load_before,
            load_after: inputs.load_after,
            busy_cpus: inputs.busy_cpus,
            settings: inputs.settings,
            latency,
            containments,
            scale: inputs.scale,
            cli: CliSection { rows: cli, skipped },
            notes: inputs.notes,
        };
        for i in 0..results.containments.len() {
            let targets = results.judge(&results.containments[i]);
            results.containments[i].targets = targets;
        }
        results
    }

    /// The row the "1,000 daemons" targets are judged on under
    /// `containment`: n = 1000, or the largest size measured.
    fn scale_reference(&self, containment: BenchContainment) -> Option<(&ScaleRow, &TendScaleRow)> {
        let rows = || {
            self.scale
                .iter()
                .filter_map(move |r| r.under(containment).map(|t| (r, t)))
        };
        rows()
            .find(|(r, _)| r.n == 1000)
            .or_else(|| rows().max_by_key(|(r, _)| r.n))
    }

    fn judge(&self, c: &ContainmentResults) -> Vec<Target> {
        let raw_median = |series: &str| self.latency.get(series).map(|s| s.median_us);
        let tend = |series: &str| c.latency.get(series);
        let tend_median = |series: &str| tend(series).map(|s| s.median_us);
        let mut targets = Vec::new();
        let mut add = |item: &str, what: &str, target: &str, measured: Option<(String, bool)>| {
            let (measured, met) = match measured {
                Some((text, met)) => (text, Some(met)),
                None => ("not measured".to_owned(), None),
            };
            targets.push(Target {
                item: item.to_owned(),
                what: what.to_owned(),
                target: target.to_owned(),
                measured,
                met,
            });
        };
        add(
            "1",
            "readiness notice: `listen()` → `Running` (median)",
            "< 1 ms",
            tend_median("tend_listen_to_running").map(|m| (us(m), m < 1000.0)),
        );
        add(
            "1",
            "`start_process` / raw spawn → `listen()` (medians)",
            "≤ 1.1",
            tend_median("tend_start_total")
                .zip(raw_median("raw_spawn_to_listen"))
                .map(|(t, r)| {
                    (
                        format!("{:.2} ({} / {})", t / r, us(t), us(r)),
                        t / r <= 1.1,
                    )
                }),
        );
        add(
            "2",
            "crash: SIGKILL → `Running` minus raw spawn → `listen()` (medians)",
            "≤ 2 ms",
            tend_median("tend_kill_to_running")
                .zip(raw_median("raw_spawn_to_listen"))
                .map(|(t, r)| {
                    (
                        format!("{} ({} − {})", us(t - r), us(t), us(r)),
                        t - r <= 2000.0,
                    )
                }),
        );
        add(
            "3",
            "stop: daemon exited → `stop_process` returned (median; p99)",
            "< 2 ms",
            tend("tend_stop_after_exit").map(|s| {
                (
                    format!("{}; p99 {}", us(s.median_us), us(s.p99_us)),
                    s.median_us < 2000.0,
                )
            }),
        );
        add(
            "3",
            "SIGTERM-ignoring daemon: `stop_process` − grace (max)",
            "≤ 50 ms",
            tend("tend_stubborn_over_grace").map(|s| {
                (
                    format!("{} (grace {} ms)", us(s.max_us), self.settings.grace_ms),
                    s.max_us <= 50_000.0,
                )
            }),
        );
        let reference = self.scale_reference(c.requested);
        let at = |r: &ScaleRow| {
            if r.n == 1000 {
                String::new()
            } else {
                format!(" [at {} daemons]", r.n)
            }
        };
        add(
            "4",
            "1,000 daemons: all `Running` / raw all listening",
            "≤ 1.2",
            reference.map(|(r, t)| {
                (
                    format!(
                        "{:.2} ({:.0} ms / {:.0} ms){}",
                        t.start_ratio,
                        t.all_running_ms,
                        r.raw_all_listening_ms,
                        at(r)
                    ),
                    t.start_ratio <= 1.2,
                )
            }),
        );
        add(
            "4",
            "1,000 daemons: manager RSS",
            "≤ 25 MiB",
            reference.map(|(r, t)| {
                let rss = t.rss_running_kib.max(t.rss_after_idle_kib);
                (
                    format!("{:.1} MiB{}", rss as f64 / 1024.0, at(r)),
                    rss <= 25 * 1024,
                )
            }),
        );
        add(
            "4",
            "1,000 daemons: manager CPU, idle with a 1 s health check",
            "≤ 2 % of a core",
            reference.map(|(r, t)| {
                (
                    format!(
                        "{:.2} % over {:.0} s (plain connects alone: {:.2} %){}",
                        t.idle_cpu_pct,
                        t.idle_secs,
                        r.raw_idle_floor_pct,
                        at(r)
                    ),
                    t.idle_cpu_pct <= 2.0,
                )
            }),
        );
        add(
            "4",
            "1,000 daemons: `stop_all_processes` / raw SIGTERM-all-and-reap",
            "≤ 1.2 (one stop's time, not the sum)",
            reference.map(|(r, t)| {
                let single = tend_median("tend_stop_total").unwrap_or(f64::NAN) / 1e3;
                (
                    format!(
                        "{:.2} ({:.0} ms / {:.0} ms; one stop {:.1} ms, sum would be {:.0} ms){}",
                        t.stop_all_over_raw,
                        t.stop_all_ms,
                        r.raw_stop_all_ms,
                        single,
                        single * r.n as f64,
                        at(r)
                    ),
                    t.stop_all_over_raw <= 1.2,
                )
            }),
        );
        targets
    }

    /// The results as markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(md, "# tend-bench results\n");
        let _ = writeln!(
            md,
            "Machine: {} × {}, Linux {}, {} MiB. Run took {:.0} s; load average \
             {:.2} before, {:.2} after; on average {:.2} of {} CPUs were busy \
             (this run included).\n",
            m.cpus,
            m.cpu_model,
            m.kernel,
            m.mem_mib,
            self.wall_secs,
            self.load_before[0],
            self.load_after[0],
            self.busy_cpus,
            m.cpus
        );
        let _ = writeln!(
            md,
            "Settings: {} latency rounds, {} stubborn stops (grace {} ms), sizes {:?}, \
             idle window {} s with a {} ms health check{}.\n",
            s.reps,
            s.stubborn_reps,
            s.grace_ms,
            s.sizes,
            s.idle_secs,
            s.health_ms,
            if s.smoke { ", smoke run" } else { "" }
        );

        let cs = &self.containments;
        let _ = writeln!(
            md,
            "{}: {}. Every tend column comes from a manager built with that containment \
             explicitly; a containment other than the one asked for would be flagged in \
             its heading.\n",
            if cs.len() == 1 {
                "Containment measured"
            } else {
                "Containments measured side by side"
            },
            cs.iter().map(|c| c.label()).collect::<Vec<_>>().join(", ")
        );

        let _ = writeln!(md, "## Targets\n");
        let mut head = "| # | Measure | Target |".to_owned();
        let mut rule = "|---|---|---|".to_owned();
        for c in cs {
            let _ = write!(head, " {} | met |", c.label());
            rule.push_str("---|---|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        let rows = cs.first().map_or(0, |c| c.targets.len());
        for i in 0..rows {
            let t = &cs[0].targets[i];
            let mut line = format!("| {} | {} | {} |", t.item, t.what, t.target);
            for c in cs {
                let (measured, met) = c
                    .targets
                    .get(i)
                    .map_or(("–", "–"), |t| (t.measured.as_str(), verdict(t.met)));
                let _ = write!(line, " {measured} | {met} |");
            }
            let _ = writeln!(md, "{line}");
        }

        let _ = writeln!(
            md,
            "\n## Latency\n\nMicroseconds over {} rounds; each round runs raw, then tend under \
             each containment (their order reversed every round).\n",
            s.reps
        );
        let mut head = "| Measure | raw median | raw p99 |".to_owned();
        let mut rule = "|---|--:|--:|".to_owned();
        for c in cs {
            let _ = write!(head, " {0} median | {0} p99 | {0} − raw |", c.label());
            rule.push_str("--:|--:|--:|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        let cell = |v: Option<f64>| v.map_or("–".to_owned(), num);
        for (label, raw, tend) in LATENCY_ROWS {
            let raw = raw.and_then(|r| self.latency.get(r));
            if cs.iter().all(|c| !c.latency.contains_key(*tend)) {
                continue;
            }
            let mut line = format!(
                "| {label} | {} | {} |",
                cell(raw.map(|r| r.median_us)),
                cell(raw.map(|r| r.p99_us)),
            );
            for c in cs {
                let t = c.latency.get(*tend);
                let _ = write!(
                    line,
                    " {} | {} | {} |",
                    cell(t.map(|t| t.median_us)),
                    cell(t.map(|t| t.p99_us)),
                    cell(raw.zip(t).map(|(r, t)| t.median_us - r.median_us)),
                );
            }
            let _ = writeln!(md, "{line}");
        }

        if !self.scale.is_empty() {
            let _ = writeln!(
                md,
                "\n## Scale: start and stop\n\nMilliseconds. Raw: n daemons spawned back to back, \
                 until the last `listen()`, run before the first supervised run and after each \
                 (the mean of all; each in brackets, in order); tend: n concurrent \
                 `start_process` until the last returned. Ratios are to the raw mean.\n"
            );
            let mut head = "| Daemons | raw all listening |".to_owned();
            let mut rule = "|--:|--:|".to_owned();
            for c in cs {
                let _ = write!(head, " {} all `Running` | ratio |", c.label());
                rule.push_str("--:|--:|");
            }
            head.push_str(" raw stop all |");
            rule.push_str("--:|");
            for c in cs {
                let _ = write!(head, " {} `stop_all_processes` | ratio |", c.label());
                rule.push_str("--:|--:|");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            let runs = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for r in &self.scale {
                let mut line = format!(
                    "| {} | {:.1} ({}) |",
                    r.n,
                    r.raw_all_listening_ms,
                    runs(&r.raw_all_listening_runs_ms)
                );
                for c in cs {
                    match r.under(c.requested) {
                        Some(t) => {
                            let _ =
                                write!(line, " {:.1} | {:.2} |", t.all_running_ms, t.start_ratio);
                        }
                        None => line.push_str(" – | – |"),
                    }
                }
                let _ = write!(
                    line,
                    " {:.1} ({}) |",
                    r.raw_stop_all_ms,
                    runs(&r.raw_stop_all_runs_ms)
                );
                for c in cs {
                    match r.under(c.requested) {
                        Some(t) => {
                            let _ = write!(
                                line,
                                " {:.1} | {:.2} |",
                                t.stop_all_ms, t.stop_all_over_raw
                            );
                        }
                        None => line.push_str(" – | – |"),
                    }
                }
                let _ = writeln!(md, "{line}");
            }
            let _ = writeln!(
                md,
                "\n## Scale: the manager's memory and CPU\n\nOne row per size and containment. \
                 Raw floor: what n plain connect-and-close checks per interval cost (measured \
                 on the raw daemons), the least any supervisor pays for such a check.\n"
            );
            let _ = writeln!(
                md,
                "| Daemons | containment | last listen → last `Running` (ms) | CPU to start (ms) | \
                 RSS before start (MiB) | RSS running (MiB) | after idle (MiB) | peak (MiB) | \
                 per daemon (KiB) | idle CPU (% of a core) | raw floor (%) | window (s) | \
                 running after | restarts | failed checks | CPU to stop all (ms) | not stopped | \
                 `list()` median (µs) |"
            );
            let _ = writeln!(
                md,
                "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
            );
            for r in &self.scale {
                let rows = cs
                    .iter()
                    .filter_map(|c| Some((c.label(), r.under(c.requested)?)))
                    .chain(r.tend_tcp.iter().map(|t| {
                        (
                            format!(
                                "{} + **tcp checks**",
                                t.in_force.as_deref().unwrap_or(t.requested.name())
                            ),
                            t,
                        )
                    }));
                for (label, t) in rows {
                    let mib = |kib: u64| kib as f64 / 1024.0;
                    let _ = writeln!(
                        md,
                        "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {:.0} | {} | {} |",
                        r.n,
                        label,
                        t.last_running_after_last_listen_ms,
                        t.start_cpu_ms,
                        mib(t.rss_idle_kib),
                        mib(t.rss_running_kib),
                        mib(t.rss_after_idle_kib),
                        mib(t.hwm_kib),
                        t.rss_per_daemon_kib,
                        t.idle_cpu_pct,
                        r.raw_idle_floor_pct,
                        t.idle_secs,
                        t.running_after_idle,
                        t.restarts,
                        t.failed_health_checks,
                        t.stop_all_cpu_ms,
                        t.not_stopped,
                        t.list.map_or("–".to_owned(), |l| num(l.median_us)),
                    );
                }
            }
        }

        let _ = writeln!(
            md,
            "\n## CLI\n\n`tend up` with tend's default containment (`auto`: cgroups where \
             available, `TEND_CONTAINMENT` decides otherwise).\n"
        );
        match &self.cli.skipped {
            Some(reason) => {
                let _ = writeln!(md, "Skipped: {reason}.");
            }
            None if self.cli.rows.is_empty() => {
                let _ = writeln!(md, "No size completed; see the notes.");
            }
            None => {
                let _ = writeln!(
                    md,
                    "Milliseconds. \"All running\" is the first `tend status --json` that \
                     reports every daemon running (polled 10 ms apart: an upper bound).\n"
                );
                let _ = writeln!(
                    md,
                    "| Daemons | `up` → last `listen()` | `up` → all running | status median | \
                     status p99 | tend RSS (MiB) | tend PSS with guard (MiB) | stop | stop method |"
                );
                let _ = writeln!(md, "|--:|--:|--:|--:|--:|--:|--:|--:|---|");
                let ms = |s: Option<Summary>, p: fn(&Summary) -> f64| {
                    s.map_or("–".to_owned(), |s| format!("{:.1}", p(&s) / 1e3))
                };
                let mib = |k: Option<u64>| {
                    k.map_or("–".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
                };
                for r in &self.cli.rows {
                    let _ = writeln!(
                        md,
                        "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
                        r.n,
                        r.up_to_last_listen_ms,
                        r.up_to_all_running_ms,
                        ms(r.status, |s| s.median_us),
                        ms(r.status, |s| s.p99_us),
                        mib(r.server_rss_kib),
                        mib(r.server_pss_kib),
                        r.stop_ms
                            .map_or("not gone".to_owned(), |ms| format!("{ms:.1}")),
                        r.stop_method,
                    );
                }
                let _ = writeln!(
                    md,
                    "\nClient commands with every daemon running, wall time of the whole \
                     command (process start included), milliseconds, median / p99. The live \
                     view's first draw is `tend top` in a pseudo-terminal until its screen \
                     counts every daemon.\n"
                );
                let _ = writeln!(
                    md,
                    "| Daemons | `status --json` | `status` | `logs NAME` | `top` first draw |"
                );
                let _ = writeln!(md, "|--:|--:|--:|--:|--:|");
                let both = |s: Option<Summary>| {
                    s.map_or("–".to_owned(), |s| {
                        format!("{:.1} / {:.1}", s.median_us / 1e3, s.p99_us / 1e3)
                    })
                };
                for r in &self.cli.rows {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} |",
                        r.n,
                        both(r.status),
                        both(r.status_table),
                        both(r.logs),
                        both(r.top_first_draw),
                    );
                }
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        md
    }
}

/// Summaries of every series of `samples` (a struct of `Vec<i64>`s).
fn summaries(samples: &impl Serialize) -> BTreeMap<String, Summary> {
    let mut latency = BTreeMap::new();
    if let Ok(serde_json::Value::Object(series)) = serde_json::to_value(samples) {
        for (name, values) in series {
            let values: Vec<i64> = serde_json::from_value(values).unwrap_or_default();
            if let Some(summary) = summarize(&values) {
                latency.insert(name, summary);
            }
        }
    }
    latency
}

/// A verdict for a table cell.
fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

/// A microsecond figure for a table cell.
fn num(us: f64) -> String {
    if us.abs() >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// A microsecond figure with a unit.
fn us(us: f64) -> String {
    if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}
