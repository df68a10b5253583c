//! `sagactl bench-report`: reads the JSON files of one `stack.sh bench` run (machine limits,
//! closed-loop saturation, the two open-loop runs, counters before and after saturation) and the
//! services' peak memory, and prints one table: each figure, the goal where the issue sets one,
//! and the platform's load as fractions of the machine's limits.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use super::counters::Counters;

/// Sagas completed per second the platform should reach at saturation.
const GOAL_SAGAS_PER_SEC: f64 = 1000.0;
/// `POST /orders` p99 at the high open-loop rate.
const GOAL_POST_P99_MS: f64 = 5.0;
const GOAL_POST_RATE: f64 = 500.0;
/// order.created → decided p99 at the low open-loop rate.
const GOAL_DECISION_P99_MS: f64 = 100.0;
const GOAL_DECISION_RATE: f64 = 100.0;

/// The processes whose peak memory is reported, by their pid file's name.
const PROCESSES: [&str; 5] = [
    "order-service",
    "payment-service",
    "inventory-service",
    "notification-service",
    "dashboard-service",
];

/// The files of one run.
#[derive(Debug, Clone)]
pub(crate) struct ReportFiles {
    pub(crate) limits: PathBuf,
    pub(crate) saturation: PathBuf,
    pub(crate) open_loop_high: PathBuf,
    pub(crate) open_loop_low: PathBuf,
    pub(crate) counters_before: PathBuf,
    pub(crate) counters_after: PathBuf,
    /// Where `<process>.pid` files are (the stack's `.local/pids`).
    pub(crate) pids_dir: PathBuf,
}

/// The parsed inputs.
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    pub(crate) limits: Value,
    pub(crate) saturation: Value,
    pub(crate) open_loop_high: Value,
    pub(crate) open_loop_low: Value,
    pub(crate) before: Counters,
    pub(crate) after: Counters,
    /// Peak resident memory (VmHWM) per process, in KiB; None when it could not be read.
    pub(crate) peak_memory_kib: Vec<(String, Option<u64>)>,
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) value: String,
    pub(crate) goal: String,
}

impl Row {
    fn new(figure: impl Into<String>, value: impl Into<String>, goal: impl Into<String>) -> Self {
        Row {
            figure: figure.into(),
            value: value.into(),
            goal: goal.into(),
        }
    }
}

/// Reads the files and prints the table.
pub(crate) fn run(files: &ReportFiles) -> anyhow::Result<()> {
    let inputs = Inputs {
        limits: read_json(&files.limits)?,
        saturation: read_json(&files.saturation)?,
        open_loop_high: read_json(&files.open_loop_high)?,
        open_loop_low: read_json(&files.open_loop_low)?,
        before: Counters::from_json(&read_json(&files.counters_before)?)
            .with_context(|| format!("reading {}", files.counters_before.display()))?,
        after: Counters::from_json(&read_json(&files.counters_after)?)
            .with_context(|| format!("reading {}", files.counters_after.display()))?,
        peak_memory_kib: process_instances(&files.pids_dir)
            .into_iter()
            .map(|name| {
                let kib = peak_memory_kib(&files.pids_dir, &name);
                (name, kib)
            })
            .collect(),
    };
    print!("{}", render(&rows(&inputs)));
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(text.trim()).with_context(|| format!("{} is not one JSON object", path.display()))
}

/// The [`PROCESSES`] with a pid file, each instance of one (`order-service`, `order-service-2`,
/// ...) by its own name; a process with none is still listed, its memory unknown.
fn process_instances(pids_dir: &Path) -> Vec<String> {
    let files: Vec<String> = std::fs::read_dir(pids_dir)
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    entry
                        .ok()?
                        .file_name()
                        .to_str()?
                        .strip_suffix(".pid")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut names = Vec::new();
    for process in PROCESSES {
        let mut instances: Vec<(u32, &String)> = files
            .iter()
            .filter_map(|file| instance_number(process, file).map(|number| (number, file)))
            .collect();
        instances.sort();
        if instances.is_empty() {
            names.push(process.to_owned());
        }
        names.extend(instances.into_iter().map(|(_, file)| file.clone()));
    }
    names
}

/// 1 for `process` itself, n for `<process>-<n>`; None for another name.
fn instance_number(process: &str, name: &str) -> Option<u32> {
    match name.strip_prefix(process)? {
        "" => Some(1),
        rest => rest.strip_prefix('-')?.parse().ok(),
    }
}

/// VmHWM of the process whose id is in `<pids_dir>/<name>.pid`.
fn peak_memory_kib(pids_dir: &Path, name: &str) -> Option<u64> {
    let pid = std::fs::read_to_string(pids_dir.join(format!("{name}.pid"))).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
    vm_hwm_kib(&status)
}

/// The `VmHWM:    123456 kB` line of /proc/<pid>/status, in KiB.
pub(crate) fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
}

fn number(value: &Value, pointer: &str) -> f64 {
    value.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// `measured` against an upper or lower bound, as the goal column shows it.
fn verdict(goal: &str, met: bool) -> String {
    format!("{goal}: {}", if met { "met" } else { "NOT met" })
}

/// The rows of the table, from the inputs alone.
pub(crate) fn rows(inputs: &Inputs) -> Vec<Row> {
    let limits = &inputs.limits;
    let saturation = &inputs.saturation;
    let pg_commits = number(limits, "/postgres/commits_per_sec");
    let kafka_round_trips = number(limits, "/kafka/round_trips_per_sec");
    let sagas_per_sec = number(saturation, "/sagas_per_sec");
    let orders = number(saturation, "/orders");
    let transactions_per_saga = (inputs.after.pg_xact_commit - inputs.before.pg_xact_commit) as f64 / orders;
    let records_per_saga = (inputs.after.kafka_records - inputs.before.kafka_records) as f64 / orders;

    let mut rows = vec![
        Row::new(
            format!(
                "machine: PostgreSQL commits/s (pgbench, fsync {}, synchronous_commit {})",
                limits.pointer("/postgres/fsync").and_then(Value::as_str).unwrap_or("?"),
                limits
                    .pointer("/postgres/synchronous_commit")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ),
            format!("{pg_commits:.0}"),
            "",
        ),
        Row::new(
            "machine: Kafka round trips/s (acks=all, produce -> consume)",
            format!("{kafka_round_trips:.0}"),
            "",
        ),
        Row::new(
            "machine: Kafka round trip p50 / p99 at that load",
            format!(
                "{:.1} / {:.1} ms",
                number(limits, "/kafka/round_trip/p50_ms"),
                number(limits, "/kafka/round_trip/p99_ms")
            ),
            "",
        ),
        Row::new(
            format!(
                "saturation ({} orders, {} clients): sagas/s",
                orders,
                number(saturation, "/concurrency")
            ),
            format!("{sagas_per_sec:.1}"),
            verdict(
                &format!(">= {GOAL_SAGAS_PER_SEC:.0}"),
                sagas_per_sec >= GOAL_SAGAS_PER_SEC,
            ),
        ),
        Row::new(
            "saturation: POST /orders p50 / p99 / p99.9",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                number(saturation, "/post_orders/p50_ms"),
                number(saturation, "/post_orders/p99_ms"),
                number(saturation, "/post_orders/p999_ms")
            ),
            "",
        ),
        Row::new(
            "saturation: order.created -> decided p50 / p99",
            format!(
                "{:.1} / {:.1} ms",
                number(saturation, "/created_to_decided/p50_ms"),
                number(saturation, "/created_to_decided/p99_ms")
            ),
            "",
        ),
        Row::new(
            "cost: PostgreSQL transactions per saga (4 service databases)",
            format!("{transactions_per_saga:.1}"),
            "",
        ),
        Row::new(
            "cost: Kafka records per saga (saga topics)",
            format!("{records_per_saga:.1}"),
            "",
        ),
        Row::new(
            "load: sagas/s x transactions/saga / PostgreSQL commits/s",
            format!("{:.2}", sagas_per_sec * transactions_per_saga / pg_commits),
            "",
        ),
        Row::new(
            "load: sagas/s x records/saga / Kafka round trips/s",
            format!("{:.2}", sagas_per_sec * records_per_saga / kafka_round_trips),
            "",
        ),
    ];
    rows.extend(open_loop_rows(&inputs.open_loop_high, Goal::PostP99));
    rows.extend(open_loop_rows(&inputs.open_loop_low, Goal::DecisionP99));
    for (name, kib) in &inputs.peak_memory_kib {
        rows.push(Row::new(
            format!("peak memory (VmHWM): {name}"),
            kib.map_or("unknown (not running?)".to_string(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            }),
            "",
        ));
    }
    rows
}

/// Which goal an open-loop run is held to.
#[derive(Debug, Clone, Copy)]
enum Goal {
    PostP99,
    DecisionP99,
}

fn open_loop_rows(run: &Value, goal: Goal) -> Vec<Row> {
    let rate = number(run, "/rate");
    let label = format!("open loop {rate}/s for {} s", number(run, "/duration_secs"));
    let post_p99 = number(run, "/post_orders/p99_ms");
    let decision_p99 = number(run, "/created_to_decided/p99_ms");
    let held_to = |goal_rate: f64, text: String, met: bool| {
        if (rate - goal_rate).abs() < f64::EPSILON {
            verdict(&text, met)
        } else {
            format!("{text} at {goal_rate:.0}/s (not this rate)")
        }
    };
    let (post_goal, decision_goal) = match goal {
        Goal::PostP99 => (
            held_to(
                GOAL_POST_RATE,
                format!("p99 <= {GOAL_POST_P99_MS:.0} ms"),
                post_p99 <= GOAL_POST_P99_MS,
            ),
            String::new(),
        ),
        Goal::DecisionP99 => (
            String::new(),
            held_to(
                GOAL_DECISION_RATE,
                format!("p99 <= {GOAL_DECISION_P99_MS:.0} ms"),
                decision_p99 <= GOAL_DECISION_P99_MS,
            ),
        ),
    };
    vec![
        Row::new(
            format!("{label}: achieved send rate / sent late (> 10 ms)"),
            format!(
                "{:.1}/s / {}",
                number(run, "/achieved_send_rate"),
                run["late"].as_u64().unwrap_or_default()
            ),
            "",
        ),
        Row::new(
            format!("{label}: accepted / errors"),
            format!(
                "{} / {}",
                run["accepted"].as_u64().unwrap_or_default(),
                run["errors"].as_u64().unwrap_or_default()
            ),
            "",
        ),
        Row::new(
            format!("{label}: POST /orders p50 / p99 / p99.9 (from schedule)"),
            format!(
                "{:.1} / {post_p99:.1} / {:.1} ms",
                number(run, "/post_orders/p50_ms"),
                number(run, "/post_orders/p999_ms")
            ),
            post_goal,
        ),
        Row::new(
            format!("{label}: order.created -> decided p50 / p99"),
            format!(
                "{:.1} / {decision_p99:.1} ms",
                number(run, "/created_to_decided/p50_ms")
            ),
            decision_goal,
        ),
    ]
}

/// The rows as a plain-text table with a header.
pub(crate) fn render(rows: &[Row]) -> String {
    let header = Row::new("figure", "measured", "goal");
    let width = |column: fn(&Row) -> &str| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|row| column(row).chars().count())
            .max()
            .unwrap_or(0)
    };
    let (figure_width, value_width) = (width(|row| &row.figure), width(|row| &row.value));
    let line = |row: &Row| {
        format!(
            "{:<figure_width$}  {:>value_width$}  {}",
            row.figure, row.value, row.goal
        )
        .trim_end()
        .to_string()
            + "\n"
    };
    let mut table = line(&header);
    table += &format!(
        "{}\n",
        "-".repeat(figure_width + value_width + 4 + width(|row| &row.goal))
    );
    for row in rows {
        table += &line(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(high_rate: f64, high_post_p99_ms: f64) -> Inputs {
        Inputs {
            limits: json!({
                "postgres": {"commits_per_sec": 4000.0, "fsync": "on", "synchronous_commit": "on"},
                "kafka": {"round_trips_per_sec": 20000.0, "round_trip": {"p50_ms": 2.0, "p99_ms": 8.0}},
            }),
            saturation: json!({
                "orders": 100, "concurrency": 32, "sagas_per_sec": 500.0,
                "post_orders": {"p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0},
                "created_to_decided": {"p50_ms": 10.0, "p99_ms": 20.0},
            }),
            open_loop_high: json!({
                "rate": high_rate, "duration_secs": 20.0, "achieved_send_rate": high_rate, "late": 0,
                "accepted": 10, "errors": 0,
                "post_orders": {"p50_ms": 1.0, "p99_ms": high_post_p99_ms, "p999_ms": 9.0},
                "created_to_decided": {"p50_ms": 10.0, "p99_ms": 20.0},
            }),
            open_loop_low: json!({
                "rate": 100.0, "duration_secs": 30.0, "achieved_send_rate": 100.0, "late": 0,
                "accepted": 10, "errors": 0,
                "post_orders": {"p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0},
                "created_to_decided": {"p50_ms": 10.0, "p99_ms": 150.0},
            }),
            before: Counters {
                pg_xact_commit: 1000,
                kafka_records: 50,
            },
            after: Counters {
                pg_xact_commit: 2600,
                kafka_records: 750,
            },
            peak_memory_kib: vec![("order-service".into(), Some(20480)), ("payment-service".into(), None)],
        }
    }

    fn value_of<'a>(rows: &'a [Row], figure_start: &str) -> &'a Row {
        rows.iter()
            .find(|row| row.figure.starts_with(figure_start))
            .unwrap_or_else(|| panic!("no row {figure_start:?}"))
    }

    #[test]
    fn the_costs_and_loads_are_the_counters_deltas_per_saga_against_the_limits() {
        let rows = rows(&inputs(500.0, 4.0));
        assert_eq!(value_of(&rows, "cost: PostgreSQL").value, "16.0");
        assert_eq!(value_of(&rows, "cost: Kafka").value, "7.0");
        // 500 sagas/s x 16 transactions / 4000 commits/s; 500 x 7 records / 20000 round trips/s.
        assert_eq!(value_of(&rows, "load: sagas/s x transactions").value, "2.00");
        assert_eq!(value_of(&rows, "load: sagas/s x records").value, "0.17");
        assert_eq!(value_of(&rows, "saturation (100").goal, ">= 1000: NOT met");
        assert_eq!(value_of(&rows, "peak memory (VmHWM): order").value, "20.0 MiB");
    }

    #[test]
    fn a_goal_is_judged_only_at_the_rate_the_issue_sets_it_for() {
        let at_goal_rate = rows(&inputs(500.0, 4.0));
        let post = |rows: &[Row]| value_of(rows, "open loop 500/s for 20 s: POST").goal.clone();
        assert_eq!(post(&at_goal_rate), "p99 <= 5 ms: met");
        assert_eq!(post(&rows(&inputs(500.0, 6.0))), "p99 <= 5 ms: NOT met");
        let quick = rows(&inputs(50.0, 1.0));
        assert_eq!(
            value_of(&quick, "open loop 50/s for 20 s: POST").goal,
            "p99 <= 5 ms at 500/s (not this rate)"
        );
        assert_eq!(
            value_of(&quick, "open loop 100/s for 30 s: order.created").goal,
            "p99 <= 100 ms: NOT met"
        );
    }

    #[test]
    fn each_instance_of_a_process_is_known_by_its_number() {
        assert_eq!(instance_number("order-service", "order-service"), Some(1));
        assert_eq!(instance_number("order-service", "order-service-2"), Some(2));
        assert_eq!(instance_number("order-service", "order-service-x"), None);
        assert_eq!(instance_number("order-service", "payment-service"), None);
        assert_eq!(instance_number("dashboard-service", "dashboard-service-10"), Some(10));
    }

    #[test]
    fn peak_memory_is_read_from_the_vm_hwm_line() {
        let status = "Name:\torder-service\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51234));
        assert_eq!(vm_hwm_kib("Name:\tx\n"), None);
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let table = render(&[Row::new("a", "1", ""), Row::new("longer figure", "12345", "goal")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "figure         measured  goal");
        assert_eq!(lines[2], "a                     1");
        assert_eq!(lines[3], "longer figure     12345  goal");
    }
}
