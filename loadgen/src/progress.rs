//! The progress line and the timeline: the executors' one-second samples, gathered.
//!
//! Every executor sends a sample per second of the run (`stats::IntervalSample`), and a
//! last one when its clients are done. A second is complete once every executor still
//! running then has reported it; it is then printed on stderr (rates, and the cycle p99 of
//! the measured window so far) and kept for the chart. Seconds after the end of a duration
//! run's window only drain cycles started inside it: printed, not charted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::config::{DURATION_MAX, WARMUP_MAX};
use crate::report::{TimelinePoint, thousands, thousands_f64};
use crate::stats::{Counts, IntervalSample, latency_histogram, merge_histogram};

/// Most seconds the timeline keeps: the longest warm-up and window. A `--cycles` run can
/// last longer; its chart then shows the first this many seconds.
const TIMELINE_POINT_COUNT_MAX: u64 = WARMUP_MAX.as_secs() + DURATION_MAX.as_secs();

/// One second of the run, being gathered from the executors.
struct PendingInterval {
    counts: Counts,
    cycle_latency_us: Histogram<u64>,
    reported_count: usize,
}

/// Gathers the executors' interval samples into whole seconds, prints the progress line
/// for each, and keeps the timeline for the chart.
pub(crate) struct Progress {
    start: Instant,
    warmup: Duration,
    /// Time from the start to the end of the window, in a duration run. Seconds after it
    /// only drain the cycles started in the window: shown, but not charted.
    window_end: Option<Duration>,
    quiet: bool,
    /// Per executor: the index of its last sample, once it has sent it.
    last_interval_index: Vec<Option<u64>>,
    pending: BTreeMap<u64, PendingInterval>,
    next_interval_index: u64,
    /// Successful cycles completed in the measured window so far, for "p99 so far".
    measured_cycle_latency_us: Histogram<u64>,
    timeline: Vec<TimelinePoint>,
}

impl Progress {
    pub(crate) fn new(
        executor_count: u16,
        start: Instant,
        warmup: Duration,
        window_end: Option<Duration>,
        quiet: bool,
    ) -> Progress {
        Progress {
            start,
            warmup,
            window_end,
            quiet,
            last_interval_index: vec![None; usize::from(executor_count)],
            pending: BTreeMap::new(),
            next_interval_index: 0,
            measured_cycle_latency_us: latency_histogram(),
            timeline: Vec::new(),
        }
    }

    pub(crate) fn all_finished(&self) -> bool {
        self.last_interval_index.iter().all(Option::is_some)
    }

    pub(crate) fn add(&mut self, sample: IntervalSample) {
        if sample.is_last
            && let Some(last) = self
                .last_interval_index
                .get_mut(usize::from(sample.executor_index))
        {
            *last = Some(sample.interval_index);
        }
        let pending = self
            .pending
            .entry(sample.interval_index)
            .or_insert_with(|| PendingInterval {
                counts: Counts::default(),
                cycle_latency_us: latency_histogram(),
                reported_count: 0,
            });
        pending.counts.add(&sample.counts);
        merge_histogram(&mut pending.cycle_latency_us, &sample.cycle_latency_us);
        pending.reported_count += 1;
        while let Some(pending) = self.pending.get(&self.next_interval_index)
            && pending.reported_count >= self.expected_count(self.next_interval_index)
        {
            self.emit_next();
        }
    }

    /// Executors that report interval `index`: those not finished before it.
    fn expected_count(&self, index: u64) -> usize {
        self.last_interval_index
            .iter()
            .filter(|last| last.is_none_or(|last| last >= index))
            .count()
    }

    fn emit_next(&mut self) {
        let index = self.next_interval_index;
        self.next_interval_index += 1;
        let Some(interval) = self.pending.remove(&index) else {
            return;
        };
        // The last interval of a run is cut short: rates over the part that elapsed.
        let interval_start = self.start + Duration::from_secs(index);
        let length = Instant::now()
            .saturating_duration_since(interval_start)
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        let second = index as f64 + length.as_secs_f64();
        let per_sec = |count: u64| count as f64 / length.as_secs_f64();
        let is_drain = self
            .window_end
            .is_some_and(|window_end| Duration::from_secs(index) >= window_end);
        let is_measured = Duration::from_secs(index) >= self.warmup && !is_drain;
        if is_measured {
            merge_histogram(
                &mut self.measured_cycle_latency_us,
                &interval.cycle_latency_us,
            );
        }
        let point = TimelinePoint {
            second,
            counts: interval.counts,
            cycle_latency_us_p50: interval.cycle_latency_us.value_at_quantile(0.5),
            cycle_latency_us_p99: interval.cycle_latency_us.value_at_quantile(0.99),
        };
        if !self.quiet {
            let (phase, p99_label, p99_us) = if is_measured {
                (
                    "measured",
                    "cycle p99 so far",
                    self.measured_cycle_latency_us.value_at_quantile(0.99),
                )
            } else if is_drain {
                ("drain   ", "cycle p99", point.cycle_latency_us_p99)
            } else {
                ("warm-up ", "cycle p99", point.cycle_latency_us_p99)
            };
            let counts = &interval.counts;
            let mut line = format!(
                "[{:>4}s {phase}] {:>10} successes/s {:>10} conflicts/s  {p99_label} {} µs",
                index + 1,
                thousands_f64(per_sec(counts.successes)),
                thousands_f64(per_sec(counts.conflicts)),
                thousands(p99_us),
            );
            if counts.abandoned > 0 || counts.errors > 0 {
                line += &format!(
                    "  abandoned/s {}  errors/s {}",
                    thousands_f64(per_sec(counts.abandoned)),
                    thousands_f64(per_sec(counts.errors))
                );
            }
            eprintln!("{line}");
        }
        if !is_drain && (self.timeline.len() as u64) < TIMELINE_POINT_COUNT_MAX {
            self.timeline.push(point);
        }
    }

    /// Emits what is still pending, in order, and returns the timeline.
    pub(crate) fn finish(mut self) -> Vec<TimelinePoint> {
        while let Some(&index) = self.pending.keys().next() {
            self.next_interval_index = index;
            self.emit_next();
        }
        self.timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        executor_index: u16,
        interval_index: u64,
        successes: u64,
        is_last: bool,
    ) -> IntervalSample {
        let mut cycle_latency_us = latency_histogram();
        for _ in 0..successes {
            cycle_latency_us.saturating_record(100);
        }
        IntervalSample {
            executor_index,
            interval_index,
            counts: Counts {
                successes,
                records: successes,
                ..Counts::default()
            },
            cycle_latency_us,
            is_last,
        }
    }

    #[test]
    fn seconds_complete_when_every_running_executor_reported_them() {
        // Started 10 s ago, so every second looks whole when it is emitted.
        let start = Instant::now() - Duration::from_secs(10);
        let mut progress = Progress::new(2, start, Duration::ZERO, None, true);
        progress.add(sample(0, 0, 5, false));
        assert!(
            progress.timeline.is_empty(),
            "executor 1 has not reported second 0"
        );
        progress.add(sample(1, 0, 7, false));
        assert_eq!(progress.timeline.len(), 1);
        assert_eq!(progress.timeline[0].counts.successes, 12);
        // Executor 1 finishes within second 1; executor 0 goes on alone.
        progress.add(sample(1, 1, 1, true));
        progress.add(sample(0, 1, 4, false));
        progress.add(sample(0, 2, 3, false));
        assert_eq!(
            progress.timeline.len(),
            3,
            "second 2 waits for executor 0 only"
        );
        assert!(!progress.all_finished());
        progress.add(sample(0, 3, 2, true));
        assert!(progress.all_finished());
        let timeline = progress.finish();
        let successes: Vec<u64> = timeline
            .iter()
            .map(|point| point.counts.successes)
            .collect();
        assert_eq!(successes, [12, 5, 3, 2]);
        assert_eq!(timeline[3].cycle_latency_us_p99, 100);
    }

    #[test]
    fn seconds_after_the_window_are_not_charted() {
        let start = Instant::now() - Duration::from_secs(10);
        let warmup = Duration::from_secs(1);
        let window_end = Some(Duration::from_secs(2));
        let mut progress = Progress::new(1, start, warmup, window_end, true);
        for index in 0..3 {
            progress.add(sample(0, index, 1, index == 2));
        }
        // Second 0 is warm-up, 1 is measured, 2 drains: only 1 counts towards "so far".
        assert_eq!(progress.measured_cycle_latency_us.len(), 1);
        assert_eq!(progress.finish().len(), 2);
    }
}
