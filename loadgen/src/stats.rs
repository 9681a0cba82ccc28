//! Counting and timing what cycles did: per executor while the run goes, merged at the end.
//!
//! Each executor owns one [`Recorder`]; its client tasks record into it, and once a second
//! it hands the last second's figures to the main thread as an [`IntervalSample`] (the
//! progress line and the timeline chart). At the end the executor returns its [`Totals`],
//! and the main thread merges them. Nothing is shared between executors but these messages.
//!
//! Two views of the same cycles, on purpose:
//! - intervals count every cycle by the second it *completed* in, warm-up included: what
//!   the server is doing right now;
//! - totals count only *measured* cycles: those whose (intended) start lies in the
//!   measured window, each waited for to its end, so that the slow ones straddling the end
//!   of the window are not dropped from the latency figures.
//!
//! Latencies are in microseconds, from 1 µs to [`LATENCY_US_MAX`] with 3 significant
//! digits; a larger value is recorded as the maximum (and the report's max shows it).

use std::time::Instant;

use hdrhistogram::Histogram;

use crate::workload::CycleOutcome;

/// Largest latency a histogram tells apart: one hour, in microseconds. Requests time out
/// long before; only an open loop far behind its schedule gets near it.
pub const LATENCY_US_MAX: u64 = 3_600 * 1_000_000;

/// Significant decimal digits of every latency histogram (0.1% resolution).
pub const LATENCY_SIGNIFICANT_DIGIT_COUNT: u8 = 3;

/// An empty latency histogram with the crate's bounds.
#[must_use]
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGIT_COUNT)
        .expect("constant histogram bounds are valid: 1 <= low, high >= 2 * low, 3 digits")
}

/// Adds `source` into `target`; both come from [`latency_histogram`], so they always fit.
pub fn merge_histogram(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    target
        .add(source)
        .expect("histograms with the same bounds always add");
}

/// How cycles ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Cycles whose batch was appended (acknowledged).
    pub successes: u64,
    /// Records in those batches.
    pub records: u64,
    /// Conflict responses, in cycles of every outcome.
    pub conflicts: u64,
    /// Cycles given up after `--max-retries` retries.
    pub abandoned: u64,
    /// Cycles that failed on an error.
    pub errors: u64,
}

impl Counts {
    /// Counts one cycle's outcome.
    pub fn count(&mut self, outcome: &CycleOutcome) {
        match outcome {
            CycleOutcome::Succeeded {
                record_count,
                conflict_count,
                ..
            } => {
                self.successes += 1;
                self.records += u64::from(*record_count);
                self.conflicts += u64::from(*conflict_count);
            }
            CycleOutcome::Abandoned { conflict_count } => {
                self.abandoned += 1;
                self.conflicts += u64::from(*conflict_count);
            }
            CycleOutcome::Failed { conflict_count, .. } => {
                self.errors += 1;
                self.conflicts += u64::from(*conflict_count);
            }
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.successes += other.successes;
        self.records += other.records;
        self.conflicts += other.conflicts;
        self.abandoned += other.abandoned;
        self.errors += other.errors;
    }
}

/// What one executor saw complete during one second of the run.
#[derive(Debug)]
pub struct IntervalSample {
    /// The executor that sent it.
    pub executor_index: u16,
    /// Which second: it covers `[start + index s, start + (index + 1) s)` of the run.
    pub interval_index: u64,
    /// Cycles completed in it, by outcome.
    pub counts: Counts,
    /// Latency of the successful cycles completed in it.
    pub cycle_latency_us: Histogram<u64>,
    /// The executor's last sample: its clients are done, and this one covers up to then.
    pub is_last: bool,
}

/// What one executor measured over the whole run (measured cycles only).
#[derive(Debug)]
pub struct Totals {
    /// Measured cycles, by outcome.
    pub counts: Counts,
    /// Measured successful cycles: from the (intended) start to the acknowledgement.
    pub cycle_latency_us: Histogram<u64>,
    /// Acknowledged appends of measured cycles: from sending to the acknowledgement.
    pub append_latency_us: Histogram<u64>,
    /// When the last measured cycle completed (`--cycles` runs end there).
    pub measured_end: Option<Instant>,
    /// Cycles an open loop (`--rate`) planned inside the window but never started, because
    /// the server fell too far behind.
    pub unstarted_cycles: u64,
    /// The first error, for the report: more of the same usually follow.
    pub first_error: Option<String>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            counts: Counts::default(),
            cycle_latency_us: latency_histogram(),
            append_latency_us: latency_histogram(),
            measured_end: None,
            unstarted_cycles: 0,
            first_error: None,
        }
    }
}

impl Totals {
    /// Adds another executor's totals to these.
    pub fn merge(&mut self, other: &Totals) {
        self.counts.add(&other.counts);
        merge_histogram(&mut self.cycle_latency_us, &other.cycle_latency_us);
        merge_histogram(&mut self.append_latency_us, &other.append_latency_us);
        self.measured_end = self.measured_end.max(other.measured_end);
        self.unstarted_cycles += other.unstarted_cycles;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// One executor's counters: the current second, and the measured totals.
#[derive(Debug)]
pub struct Recorder {
    interval_counts: Counts,
    interval_cycle_latency_us: Histogram<u64>,
    totals: Totals,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            interval_counts: Counts::default(),
            interval_cycle_latency_us: latency_histogram(),
            totals: Totals::default(),
        }
    }
}

impl Recorder {
    /// Records a finished cycle that took `latency_us` (from its intended start) and ended at
    /// `completed`; `measured` when its start lies in the measured window.
    pub fn record_cycle(
        &mut self,
        outcome: &CycleOutcome,
        latency_us: u64,
        measured: bool,
        completed: Instant,
    ) {
        self.interval_counts.count(outcome);
        let succeeded = matches!(outcome, CycleOutcome::Succeeded { .. });
        if succeeded {
            self.interval_cycle_latency_us.saturating_record(latency_us);
        }
        if let CycleOutcome::Failed { error, .. } = outcome
            && self.totals.first_error.is_none()
        {
            self.totals.first_error = Some(error.to_string());
        }
        if !measured {
            return;
        }
        self.totals.counts.count(outcome);
        if succeeded {
            self.totals.cycle_latency_us.saturating_record(latency_us);
        }
        self.totals.measured_end = self.totals.measured_end.max(Some(completed));
    }

    /// Records the round trip of an acknowledged append of a measured cycle.
    pub fn record_append(&mut self, latency_us: u64) {
        self.totals.append_latency_us.saturating_record(latency_us);
    }

    /// Records open-loop cycles that were planned in the window but never started.
    pub fn record_unstarted(&mut self, cycle_count: u64) {
        self.totals.unstarted_cycles += cycle_count;
    }

    /// The figures of the second that just ended, resetting them for the next.
    pub fn take_interval(
        &mut self,
        executor_index: u16,
        interval_index: u64,
        is_last: bool,
    ) -> IntervalSample {
        IntervalSample {
            executor_index,
            interval_index,
            counts: std::mem::take(&mut self.interval_counts),
            cycle_latency_us: std::mem::replace(
                &mut self.interval_cycle_latency_us,
                latency_histogram(),
            ),
            is_last,
        }
    }

    /// The measured totals, leaving empty ones behind.
    pub fn take_totals(&mut self) -> Totals {
        std::mem::take(&mut self.totals)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use cairn_client::ClientError;
    use cairn_engine::core::Offset;

    use super::*;
    use crate::workload::CycleError;

    fn succeeded(conflict_count: u32) -> CycleOutcome {
        CycleOutcome::Succeeded {
            partition: 0,
            base_offset: Offset(0),
            record_count: 4,
            conflict_count,
        }
    }

    #[test]
    fn only_measured_cycles_reach_the_totals() {
        let mut recorder = Recorder::default();
        let now = Instant::now();
        recorder.record_cycle(&succeeded(2), 100, false, now);
        recorder.record_cycle(&succeeded(1), 300, true, now);
        recorder.record_cycle(
            &CycleOutcome::Abandoned { conflict_count: 3 },
            900,
            true,
            now,
        );
        let failed = CycleOutcome::Failed {
            conflict_count: 0,
            error: CycleError::Client(ClientError::Timeout {
                address: SocketAddr::from(([127, 0, 0, 1], 1)),
                timeout: Duration::from_secs(1),
            }),
        };
        recorder.record_cycle(&failed, 50, true, now);

        let interval = recorder.take_interval(0, 0, false);
        assert_eq!(interval.counts.successes, 2);
        assert_eq!(interval.counts.conflicts, 6);
        assert_eq!(interval.cycle_latency_us.len(), 2);
        assert_eq!(
            recorder.take_interval(0, 1, false).counts,
            Counts::default()
        );

        let totals = recorder.take_totals();
        assert_eq!(
            totals.counts,
            Counts {
                successes: 1,
                records: 4,
                conflicts: 4,
                abandoned: 1,
                errors: 1,
            }
        );
        // Only successful cycles have a cycle latency.
        assert_eq!(totals.cycle_latency_us.len(), 1);
        assert!(totals.first_error.unwrap().contains("no response"));
    }

    #[test]
    fn totals_merge_counts_histograms_and_ends() {
        let now = Instant::now();
        let mut first = Totals::default();
        first.counts.successes = 2;
        first.cycle_latency_us.saturating_record(10);
        first.measured_end = Some(now);
        let mut second = Totals::default();
        second.counts.successes = 3;
        second
            .cycle_latency_us
            .saturating_record(LATENCY_US_MAX * 2);
        second.measured_end = Some(now + Duration::from_secs(1));
        first.merge(&second);
        assert_eq!(first.counts.successes, 5);
        assert_eq!(first.cycle_latency_us.len(), 2);
        assert_eq!(first.measured_end, second.measured_end);
        // Beyond the bound is kept as the bound, not lost.
        assert!(first.cycle_latency_us.max() >= LATENCY_US_MAX);
    }
}
