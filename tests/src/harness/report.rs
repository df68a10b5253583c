//! The verdict of one failure-injection run: what was placed and how it ended, which faults were
//! injected, each invariant's result and how long the system took to go quiet, as readable text
//! and as JSON. A run passes only if invariants were checked, all of them held, and it quiesced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::invariants::InvariantResult;
use super::replay::ReplayCheck;
use super::state::SystemState;

/// How many offending ids and detail lines the text shows per invariant (the JSON has them all).
const SHOWN_PER_INVARIANT: usize = 20;

/// Outcome key of a placed order the order database does not have.
pub const MISSING_OUTCOME: &str = "MISSING";

/// Everything one run established.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The seed the load and the faults were drawn from; the same seed replays the same run.
    pub seed: u64,
    /// Orders the load generator placed (accepted with 202).
    pub orders_placed: usize,
    /// Orders by outcome: `CONFIRMED`, `FAILED:{reason}`, `PENDING`, `MISSING`, … (see
    /// [`outcomes_of`]).
    pub outcomes: BTreeMap<String, usize>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// The invariants' results, as [`super::invariants::check`] returns them.
    pub invariants: Vec<InvariantResult>,
    /// Seconds until the system was quiet; `None` if it never was.
    pub quiescence_secs: Option<f64>,
    /// Consumer groups that stopped making progress with records left to read, one line each
    /// with the group, its lag and its lagging partitions; any fails the run.
    #[serde(default)]
    pub stalled_groups: Vec<String>,
    /// Outbox rows the relays parked, one line per service; any fails the run.
    #[serde(default)]
    pub parked_outbox_rows: Vec<String>,
    /// With --verify-replay: each service rebuilt from the topics and compared with its live
    /// database; any finding or difference fails the run.
    #[serde(default)]
    pub replay_checks: Vec<ReplayCheck>,
    /// Seconds the whole run took.
    pub duration_secs: f64,
    /// Anything else worth knowing about the run.
    pub notes: Vec<String>,
}

/// Counts the orders of `state` by outcome: `CONFIRMED`, `FAILED:{reason}` (`FAILED:unknown` when
/// no reason was stored), any other status as stored (e.g. `PENDING`), and `MISSING` for each
/// placed order the order database does not have.
pub fn outcomes_of(state: &SystemState) -> BTreeMap<String, usize> {
    let mut outcomes = BTreeMap::new();
    for order in state.orders.values() {
        let key = if order.status == "FAILED" {
            format!("FAILED:{}", order.failure_reason.as_deref().unwrap_or("unknown"))
        } else {
            order.status.clone()
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    let missing = state
        .placed_orders
        .iter()
        .filter(|id| !state.orders.contains_key(*id))
        .collect::<BTreeSet<_>>()
        .len();
    if missing > 0 {
        outcomes.insert(MISSING_OUTCOME.to_string(), missing);
    }
    outcomes
}

impl Report {
    /// Whether the run passed: at least one invariant was checked, every one held, no consumer
    /// group stalled, and the system quiesced.
    pub fn passed(&self) -> bool {
        self.reasons_for_failure().is_empty()
    }

    /// Fails the calling test unless the run passed with every service rebuilt from the topics
    /// and verified (`--verify-replay`); the message points at the run's folder.
    pub fn assert_passed_with_replay_verified(&self, run_dir: &Path) {
        assert_eq!(self.replay_checks.len(), 4, "every service rebuilt and verified");
        assert!(
            self.passed(),
            "invariants violated, no quiescence or a rebuilt service differs; logs and report in {}",
            run_dir.display()
        );
    }

    /// The report as readable multi-line text (the same as its `Display`).
    pub fn render_text(&self) -> String {
        self.to_string()
    }

    /// Writes the report as pretty JSON to `path`, creating its directory if needed.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        std::fs::write(path, json)
    }

    /// Why the run did not pass; empty if it passed.
    fn reasons_for_failure(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.invariants.is_empty() {
            reasons.push("no invariant was checked".to_string());
        }
        let failed: Vec<String> = self
            .invariants
            .iter()
            .filter(|i| !i.passed)
            .map(|i| i.id.to_string())
            .collect();
        match failed.len() {
            0 => {}
            1 => reasons.push(format!("invariant {} failed", failed.join(""))),
            _ => reasons.push(format!("invariants {} failed", failed.join(", "))),
        }
        if !self.stalled_groups.is_empty() {
            reasons.push(format!("{} consumer group(s) stalled", self.stalled_groups.len()));
        }
        if self.quiescence_secs.is_none() {
            reasons.push("the system did not quiesce".to_string());
        }
        if !self.parked_outbox_rows.is_empty() {
            reasons.push(format!(
                "{} service(s) parked outbox rows",
                self.parked_outbox_rows.len()
            ));
        }
        let unequal = self.replay_checks.iter().filter(|check| !check.passed()).count();
        if unequal > 0 {
            reasons.push(format!("{unequal} rebuilt service(s) differ from the live ones"));
        }
        reasons
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Failure-injection run, seed {}", self.seed)?;
        writeln!(f, "Duration: {:.1} s", self.duration_secs)?;
        match self.quiescence_secs {
            Some(secs) => writeln!(f, "Time to quiescence: {secs:.1} s")?,
            None => writeln!(f, "Time to quiescence: did not quiesce")?,
        }

        writeln!(f)?;
        writeln!(f, "Orders placed: {}", self.orders_placed)?;
        write_counts(f, &self.outcomes, "no orders")?;

        writeln!(f)?;
        writeln!(f, "Faults injected: {}", self.faults.values().sum::<usize>())?;
        write_counts(f, &self.faults, "no faults")?;

        if !self.stalled_groups.is_empty() {
            writeln!(f)?;
            writeln!(f, "Stalled consumer groups:")?;
            for stalled in &self.stalled_groups {
                writeln!(f, "  - {stalled}")?;
            }
        }
        if !self.parked_outbox_rows.is_empty() {
            writeln!(f)?;
            writeln!(f, "Parked outbox rows:")?;
            for parked in &self.parked_outbox_rows {
                writeln!(f, "  - {parked}")?;
            }
        }
        if !self.replay_checks.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "Replay (rebuilt from the topics, verified against the live databases):"
            )?;
            for check in &self.replay_checks {
                writeln!(
                    f,
                    "  {}: {} events at {:.0}/s, {} poison record(s) skipped, {}",
                    check.service,
                    check.events,
                    check.events_per_sec,
                    check.undecodable,
                    if check.passed() { "equal" } else { "DIFFERENT" }
                )?;
                for line in check.findings.iter().chain(&check.differences) {
                    writeln!(f, "    - {line}")?;
                }
            }
        }

        writeln!(f)?;
        writeln!(f, "Invariants:")?;
        if self.invariants.is_empty() {
            writeln!(f, "  (none checked)")?;
        }
        for invariant in &self.invariants {
            let verdict = if invariant.passed { "PASS" } else { "FAIL" };
            writeln!(f, "  [{verdict}] {}. {}", invariant.id, invariant.name)?;
            if !invariant.offending.is_empty() {
                writeln!(f, "      offending ({}):", invariant.offending.len())?;
                write_capped(f, &invariant.offending, "        ")?;
            }
            if !invariant.details.is_empty() {
                writeln!(f, "      details ({}):", invariant.details.len())?;
                write_capped(f, &invariant.details, "        - ")?;
            }
            if !invariant.explained.is_empty() {
                writeln!(f, "      explained, not violations ({}):", invariant.explained.len())?;
                write_capped(f, &invariant.explained, "        - ")?;
            }
        }

        if !self.notes.is_empty() {
            writeln!(f)?;
            writeln!(f, "Notes:")?;
            for note in &self.notes {
                writeln!(f, "  - {note}")?;
            }
        }

        writeln!(f)?;
        let reasons = self.reasons_for_failure();
        if reasons.is_empty() {
            writeln!(f, "Verdict: PASSED")
        } else {
            writeln!(f, "Verdict: FAILED ({})", reasons.join("; "))
        }
    }
}

fn write_counts(f: &mut fmt::Formatter<'_>, counts: &BTreeMap<String, usize>, empty: &str) -> fmt::Result {
    if counts.is_empty() {
        return writeln!(f, "  ({empty})");
    }
    let width = counts.keys().map(|k| k.chars().count()).max().unwrap_or(0);
    for (key, count) in counts {
        writeln!(f, "  {key:<width$}  {count:>6}")?;
    }
    Ok(())
}

fn write_capped(f: &mut fmt::Formatter<'_>, lines: &[String], prefix: &str) -> fmt::Result {
    for line in lines.iter().take(SHOWN_PER_INVARIANT) {
        writeln!(f, "{prefix}{line}")?;
    }
    if lines.len() > SHOWN_PER_INVARIANT {
        writeln!(f, "{prefix}… and {} more", lines.len() - SHOWN_PER_INVARIANT)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::state::OrderRecord;

    fn invariant(id: u8, offending: &[&str]) -> InvariantResult {
        InvariantResult {
            id,
            name: format!("invariant number {id}"),
            passed: offending.is_empty(),
            offending: offending.iter().map(|o| o.to_string()).collect(),
            details: offending.iter().map(|o| format!("{o} is broken")).collect(),
            explained: Vec::new(),
        }
    }

    fn all_passed() -> Vec<InvariantResult> {
        (1..=6).map(|id| invariant(id, &[])).collect()
    }

    fn report(invariants: Vec<InvariantResult>, quiescence_secs: Option<f64>) -> Report {
        Report {
            seed: 42,
            orders_placed: 3,
            outcomes: BTreeMap::from([("CONFIRMED".to_string(), 2), ("FAILED:payment_declined".to_string(), 1)]),
            faults: BTreeMap::from([("kill_service".to_string(), 4), ("poison_record".to_string(), 2)]),
            invariants,
            quiescence_secs,
            stalled_groups: Vec::new(),
            parked_outbox_rows: Vec::new(),
            replay_checks: Vec::new(),
            duration_secs: 61.25,
            notes: vec!["payment service restarted 4 times".to_string()],
        }
    }

    fn order(id: &str, status: &str, reason: Option<&str>) -> OrderRecord {
        OrderRecord {
            order_id: id.into(),
            status: status.into(),
            failure_reason: reason.map(Into::into),
            total_minor: 100,
            customer_email: "c@example.test".into(),
            items: Vec::new(),
        }
    }

    #[test]
    fn a_report_with_every_invariant_passed_and_quiescence_passes() {
        let report = report(all_passed(), Some(3.5));
        assert!(report.passed());
        let text = report.render_text();
        assert!(text.contains("Verdict: PASSED"), "{text}");
        assert!(text.contains("Time to quiescence: 3.5 s"), "{text}");
        assert!(!text.contains("[FAIL]"), "{text}");
    }

    #[test]
    fn a_report_with_a_failed_invariant_is_not_passed() {
        let mut invariants = all_passed();
        invariants[2] = invariant(3, &["order-1"]);
        let report = report(invariants, Some(3.5));
        assert!(!report.passed());
        assert!(report.render_text().contains("Verdict: FAILED (invariant 3 failed)"));
    }

    #[test]
    fn a_report_that_did_not_quiesce_is_not_passed_and_says_so() {
        let report = report(all_passed(), None);
        assert!(!report.passed());
        let text = report.render_text();
        assert!(text.contains("Time to quiescence: did not quiesce"), "{text}");
        assert!(text.contains("Verdict: FAILED (the system did not quiesce)"), "{text}");
    }

    #[test]
    fn a_report_with_a_stalled_consumer_group_is_not_passed_and_names_the_group() {
        let mut report = report(all_passed(), None);
        report.stalled_groups = vec!["consumer group h1.payment-service stalled: lag 3".to_string()];
        assert!(!report.passed());
        let text = report.render_text();
        assert!(
            text.contains("  - consumer group h1.payment-service stalled: lag 3"),
            "{text}"
        );
        assert!(
            text.contains("Verdict: FAILED (1 consumer group(s) stalled; the system did not quiesce)"),
            "{text}"
        );
    }

    #[test]
    fn a_report_with_parked_outbox_rows_is_not_passed_and_lists_them() {
        let mut report = report(all_passed(), Some(2.0));
        report.parked_outbox_rows = vec!["order-service: 1 outbox row(s) parked".to_string()];
        assert!(!report.passed());
        let text = report.render_text();
        assert!(text.contains("  - order-service: 1 outbox row(s) parked"), "{text}");
        assert!(
            text.contains("Verdict: FAILED (1 service(s) parked outbox rows)"),
            "{text}"
        );
    }

    #[test]
    fn a_report_without_any_invariant_checked_is_not_passed() {
        let report = report(Vec::new(), Some(1.0));
        assert!(!report.passed());
        assert!(report.render_text().contains("no invariant was checked"));
    }

    #[test]
    fn the_text_names_every_failing_invariant_and_its_offending_ids() {
        let mut invariants = all_passed();
        invariants[1] = invariant(2, &["order-a", "order-b"]);
        invariants[4] = invariant(5, &["<order-c.failed@saga-platform.local>"]);
        let text = report(invariants, None).render_text();
        for line in [
            "[PASS] 1. invariant number 1",
            "[FAIL] 2. invariant number 2",
            "[FAIL] 5. invariant number 5",
            "order-a",
            "order-b",
            "<order-c.failed@saga-platform.local>",
            "- order-a is broken",
            "Verdict: FAILED (invariants 2, 5 failed; the system did not quiesce)",
        ] {
            assert!(text.lines().any(|l| l.trim() == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_text_shows_outcomes_faults_and_notes() {
        let text = report(all_passed(), Some(2.0)).render_text();
        for needle in [
            "seed 42",
            "Orders placed: 3",
            "Faults injected: 6",
            "payment service restarted 4 times",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        for row in [
            ["CONFIRMED", "2"],
            ["FAILED:payment_declined", "1"],
            ["kill_service", "4"],
            ["poison_record", "2"],
        ] {
            assert!(
                text.lines().any(|l| l.split_whitespace().eq(row)),
                "missing row {row:?} in\n{text}"
            );
        }
    }

    #[test]
    fn the_text_shows_at_most_twenty_offending_ids_per_invariant() {
        let ids: Vec<String> = (0..25).map(|i| format!("order-{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let text = report(vec![invariant(1, &refs)], Some(1.0)).render_text();
        assert!(text.contains("offending (25):"), "{text}");
        assert!(text.contains("order-19"), "{text}");
        assert!(!text.contains("order-20"), "{text}");
        assert!(text.contains("… and 5 more"), "{text}");
    }

    #[test]
    fn outcomes_count_orders_by_status_and_failure_reason_and_missing_placed_orders() {
        let mut state = SystemState {
            placed_orders: vec!["a".into(), "b".into(), "c".into(), "d".into(), "x".into(), "x".into()],
            ..SystemState::default()
        };
        for o in [
            order("a", "CONFIRMED", None),
            order("b", "FAILED", Some("out_of_stock")),
            order("c", "FAILED", Some("out_of_stock")),
            order("d", "PENDING", None),
            order("e", "FAILED", None),
        ] {
            state.orders.insert(o.order_id.clone(), o);
        }
        let expected: BTreeMap<String, usize> = [
            ("CONFIRMED", 1),
            ("FAILED:out_of_stock", 2),
            ("FAILED:unknown", 1),
            ("MISSING", 1),
            ("PENDING", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(outcomes_of(&state), expected);
    }

    #[test]
    fn json_round_trips_through_a_file() {
        let mut invariants = all_passed();
        invariants[5] = invariant(6, &["t1.orders[0]@42"]);
        let report = report(invariants, Some(12.75));
        let path = std::env::temp_dir()
            .join(format!("saga-report-{}-{}", std::process::id(), line!()))
            .join("report.json");
        report.write_json(&path).expect("report written");
        let text = std::fs::read_to_string(&path).expect("report read");
        let back: Report = serde_json::from_str(&text).expect("report parsed");
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        assert_eq!(back, report);
        assert!(!back.passed());

        let quiet = Report {
            quiescence_secs: None,
            ..report
        };
        let back: Report = serde_json::from_str(&serde_json::to_string(&quiet).expect("serialised")).expect("parsed");
        assert_eq!(back, quiet);
    }
}
