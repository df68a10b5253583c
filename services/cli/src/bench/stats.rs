//! The pure arithmetic of the benchmarks, without I/O: the open-loop send schedule, lateness,
//! nearest-rank percentiles (p99.9 included) and achieved rates.

use std::time::Duration;

use serde_json::{json, Value};

/// How late an order may be sent after its scheduled time before it counts as late.
pub(crate) const LATE_AFTER: Duration = Duration::from_millis(10);

/// The open-loop schedule: `rate` orders a second for `duration`, order `i` due at `i / rate`
/// seconds after the start, whatever happened to the orders before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Schedule {
    /// Orders per second.
    pub(crate) rate: f64,
    /// How long orders are sent.
    pub(crate) duration: Duration,
}

impl Schedule {
    /// A schedule of `rate` orders a second for `duration`; fails on a rate or duration that
    /// schedules no order.
    pub(crate) fn new(rate: f64, duration: Duration) -> anyhow::Result<Self> {
        if !rate.is_finite() || rate <= 0.0 {
            anyhow::bail!("--rate must be a positive number of orders per second, not {rate}");
        }
        let schedule = Schedule { rate, duration };
        if schedule.orders() == 0 {
            anyhow::bail!("--rate {rate} for {} s schedules no order", duration.as_secs_f64());
        }
        Ok(schedule)
    }

    /// Orders the schedule sends: rate × duration, rounded to the nearest whole order.
    pub(crate) fn orders(&self) -> usize {
        (self.rate * self.duration.as_secs_f64()).round() as usize
    }

    /// When order `index` is due, counted from the start.
    pub(crate) fn due(&self, index: usize) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }
}

/// How far behind its scheduled time an order was sent (zero when on time or early).
pub(crate) fn lateness(scheduled: Duration, sent: Duration) -> Duration {
    sent.saturating_sub(scheduled)
}

/// Whether an order sent `lateness` after its scheduled time counts as late.
pub(crate) fn is_late(lateness: Duration) -> bool {
    lateness > LATE_AFTER
}

/// The nearest-rank percentile of `samples` (sorts them); zero for no samples.
pub(crate) fn percentile(samples: &mut [Duration], percent: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    // The tolerance keeps 99.9 % of 1000 at rank 999: 0.999 × 1000 is 999.0000000000001 in
    // floating point.
    let rank = ((percent / 100.0) * samples.len() as f64 - 1e-9).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Events per second: `count` over `elapsed`; zero over no time.
pub(crate) fn per_second(count: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    count as f64 / elapsed.as_secs_f64()
}

/// The rate at which orders actually left: the orders after the first over the time from the
/// first send to the last (the schedule's own rate when all left on time); zero for fewer than
/// two sends.
pub(crate) fn achieved_rate(first_sent: Duration, last_sent: Duration, sent: usize) -> f64 {
    if sent < 2 {
        return 0.0;
    }
    per_second(sent - 1, last_sent.saturating_sub(first_sent))
}

/// Milliseconds, as the JSON figures carry them.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A duration for people: `1.2 ms`.
pub(crate) fn fmt_ms(duration: Duration) -> String {
    format!("{:.1} ms", millis(duration))
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) max: Duration,
}

impl Percentiles {
    /// The p50, p99, p99.9 and maximum of `samples` (sorts them).
    pub(crate) fn of(samples: &mut [Duration]) -> Self {
        Percentiles {
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            p999: percentile(samples, 99.9),
            max: percentile(samples, 100.0),
        }
    }

    /// `{"p50_ms": .., "p99_ms": .., "p999_ms": .., "max_ms": ..}`.
    pub(crate) fn to_json(self) -> Value {
        json!({
            "p50_ms": millis(self.p50),
            "p99_ms": millis(self.p99),
            "p999_ms": millis(self.p999),
            "max_ms": millis(self.max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn p99_9_of_a_thousand_samples_is_the_999th_and_of_fewer_the_largest() {
        let mut thousand: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut thousand, 99.9), Duration::from_micros(999));
        let mut hundred: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut hundred, 99.9), Duration::from_micros(100));
        let all = Percentiles::of(&mut thousand);
        assert_eq!(all.p50, Duration::from_micros(500));
        assert_eq!(all.p99, Duration::from_micros(990));
        assert_eq!(all.max, Duration::from_micros(1000));
    }

    #[test]
    fn a_schedule_sends_rate_times_duration_orders_evenly_spaced_from_zero() {
        let schedule = Schedule::new(50.0, Duration::from_secs(5)).expect("a valid schedule");
        assert_eq!(schedule.orders(), 250);
        assert_eq!(schedule.due(0), Duration::ZERO);
        assert_eq!(schedule.due(1), Duration::from_millis(20));
        assert_eq!(schedule.due(249), Duration::from_millis(4980));
        let fractional = Schedule::new(2.5, Duration::from_secs(3)).expect("a valid schedule");
        assert_eq!(fractional.orders(), 8);
        assert_eq!(fractional.due(3), Duration::from_millis(1200));
    }

    #[test]
    fn a_schedule_of_no_order_or_a_non_positive_rate_is_refused() {
        assert!(Schedule::new(0.0, Duration::from_secs(5)).is_err());
        assert!(Schedule::new(-1.0, Duration::from_secs(5)).is_err());
        assert!(Schedule::new(f64::NAN, Duration::from_secs(5)).is_err());
        assert!(Schedule::new(10.0, Duration::ZERO).is_err());
    }

    #[test]
    fn an_order_is_late_only_past_ten_milliseconds_after_its_due_time() {
        let due = Duration::from_millis(100);
        assert_eq!(lateness(due, Duration::from_millis(90)), Duration::ZERO);
        assert!(!is_late(lateness(due, Duration::from_millis(110))));
        assert!(is_late(lateness(due, Duration::from_micros(110_001))));
    }

    #[test]
    fn the_achieved_rate_counts_intervals_between_the_first_and_last_send() {
        assert!((achieved_rate(Duration::ZERO, Duration::from_millis(4980), 250) - 50.0).abs() < 1e-9);
        assert!((achieved_rate(Duration::from_secs(1), Duration::from_secs(10), 10) - 1.0).abs() < 1e-9);
        assert_eq!(achieved_rate(Duration::ZERO, Duration::ZERO, 1), 0.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
