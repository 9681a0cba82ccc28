//! What a run reports: the summary (human text, `--json`), and with `--report DIR`
//! HdrHistogram percentile files and an SVG chart.
//!
//! The JSON has exactly the fields [`Summary::to_json`] lists, all numbers but `workload`,
//! `connections` and `contention`,
//! latencies in whole microseconds; scripts (`scripts/bench-loadgen.sh`) and
//! BENCHMARKS.md read it, so a field is never renamed, only added with care.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::config::{Args, Workload};
use crate::stats::{Counts, Totals};

/// Latency percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `histogram`; all 0 when it is empty.
    #[must_use]
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
        })
    }
}

/// The outcome of a run: configuration and measured figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `uncontended`, `hot` or `blind`.
    pub workload: &'static str,
    /// `shared` or `per-client` (`--connections`).
    pub connections: &'static str,
    /// `none`, `backoff` or `queue` (`--contention`; what `hot` clients did about conflicts).
    pub contention: &'static str,
    /// Concurrent clients.
    pub clients: u32,
    /// Distinct keys touched: `--keys` for `hot`, one per client otherwise.
    pub keys: u64,
    /// Zipf exponent of the key choice; 0 for workloads that draw no keys.
    pub zipf: f64,
    /// Records per append.
    pub batch: u32,
    /// Bytes of each record's value.
    pub value_bytes: u32,
    /// Length of the measured window in seconds (with `--cycles`: until the last measured
    /// cycle completed).
    pub duration_s: f64,
    /// Measured cycles by outcome.
    pub counts: Counts,
    /// Latency of measured successful cycles, from (intended) start to acknowledgement.
    pub cycle_latency_us: Percentiles,
    /// Round trip of acknowledged appends of measured cycles.
    pub append_latency_us: Percentiles,
}

impl Summary {
    /// The summary of a run configured by `args` that measured `totals` over `duration_s`.
    #[must_use]
    pub fn new(args: &Args, totals: &Totals, duration_s: f64) -> Summary {
        Summary {
            workload: args.workload.name(),
            connections: args.connections.name(),
            contention: args.contention.name(),
            clients: args.clients,
            keys: args.key_count(),
            zipf: match args.workload {
                Workload::Hot => args.zipf,
                Workload::Uncontended | Workload::Blind => 0.0,
            },
            batch: args.batch,
            value_bytes: args.value_bytes,
            duration_s,
            counts: totals.counts,
            cycle_latency_us: Percentiles::of(&totals.cycle_latency_us),
            append_latency_us: Percentiles::of(&totals.append_latency_us),
        }
    }

    fn per_sec(&self, count: u64) -> f64 {
        if self.duration_s > 0.0 {
            count as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// Successful cycles per second.
    #[must_use]
    pub fn successes_per_sec(&self) -> f64 {
        self.per_sec(self.counts.successes)
    }

    /// Acknowledged records per second.
    #[must_use]
    pub fn records_per_sec(&self) -> f64 {
        self.per_sec(self.counts.records)
    }

    /// Acknowledged value bytes per second (keys and framing not counted).
    #[must_use]
    pub fn bytes_per_sec(&self) -> f64 {
        self.records_per_sec() * f64::from(self.value_bytes)
    }

    /// Conflicts per successful cycle; with no success, the conflicts themselves (a number
    /// either way, so that JSON readers need no special case).
    #[must_use]
    pub fn conflicts_per_success(&self) -> f64 {
        self.counts.conflicts as f64 / self.counts.successes.max(1) as f64
    }

    /// The `--json` document: exactly these fields.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "workload": self.workload,
            "connections": self.connections,
            "contention": self.contention,
            "clients": self.clients,
            "keys": self.keys,
            "zipf": self.zipf,
            "batch": self.batch,
            "value_bytes": self.value_bytes,
            "duration_s": self.duration_s,
            "successes": self.counts.successes,
            "successes_per_sec": self.successes_per_sec(),
            "records_per_sec": self.records_per_sec(),
            "bytes_per_sec": self.bytes_per_sec(),
            "conflicts": self.counts.conflicts,
            "conflicts_per_success": self.conflicts_per_success(),
            "abandoned": self.counts.abandoned,
            "errors": self.counts.errors,
            "cycle_latency_us": self.cycle_latency_us.to_json(),
            "append_latency_us": self.append_latency_us.to_json(),
        })
    }

    /// The final report for people.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let counts = &self.counts;
        let _ = writeln!(text, "measured {:.2} s", self.duration_s);
        let _ = writeln!(
            text,
            "  successes  {:>14}  {:>14}/s",
            thousands(counts.successes),
            thousands_f64(self.successes_per_sec())
        );
        let _ = writeln!(
            text,
            "  records    {:>14}  {:>14}/s  {:.1} MB/s of values",
            thousands(counts.records),
            thousands_f64(self.records_per_sec()),
            self.bytes_per_sec() / 1e6
        );
        let _ = writeln!(
            text,
            "  conflicts  {:>14}  {:>14.3} per success",
            thousands(counts.conflicts),
            self.conflicts_per_success()
        );
        let _ = writeln!(text, "  abandoned  {:>14}", thousands(counts.abandoned));
        let _ = writeln!(text, "  errors     {:>14}", thousands(counts.errors));
        let _ = writeln!(
            text,
            "  {:<16}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency_us", "p50", "p90", "p99", "p999", "max"
        );
        for (name, percentiles) in [
            ("cycle", self.cycle_latency_us),
            ("append", self.append_latency_us),
        ] {
            let _ = writeln!(
                text,
                "  {name:<16}{:>10}{:>10}{:>10}{:>10}{:>10}",
                percentiles.p50,
                percentiles.p90,
                percentiles.p99,
                percentiles.p999,
                percentiles.max
            );
        }
        text
    }
}

/// `1234567` as `1,234,567`.
#[must_use]
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A rate, rounded to a whole number, with thousands separators.
#[must_use]
pub fn thousands_f64(value: f64) -> String {
    thousands(value.max(0.0).round() as u64)
}

/// One second of the run, for the chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the run started (warm-up included) at the end of this second.
    pub second: f64,
    /// Cycles completed during it.
    pub counts: Counts,
    /// Its interval's successful cycle latency percentiles, in microseconds.
    pub cycle_latency_us_p50: u64,
    pub cycle_latency_us_p99: u64,
}

/// Writes `histogram` (microseconds) as an HdrHistogram percentile distribution (`.hgrm`,
/// the text `outputPercentileDistribution` prints) with values in milliseconds, which is
/// what HdrHistogram's plotter and most tools that read these files expect.
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl Write) -> std::io::Result<()> {
    const US_PER_MS: f64 = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total_count = 0u64;
    for step in histogram.iter_quantiles(5) {
        total_count += step.count_since_last_iteration();
        let value_ms = step.value_iterated_to() as f64 / US_PER_MS;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(
                out,
                "{value_ms:>12.3} {quantile:>2.12} {total_count:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value_ms:>12.3} {quantile:>2.12} {total_count:>10}")?;
        }
    }
    let sub_bucket_count = (2.0 * 10f64.powi(i32::from(histogram.sigfig())))
        .log2()
        .ceil()
        .exp2();
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / US_PER_MS,
        histogram.stdev() / US_PER_MS
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / US_PER_MS,
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_bucket_count
    )
}

/// Writes `--report DIR`: `cycle_latency_ms.hgrm`, `append_latency_ms.hgrm` and
/// `report.svg`.
pub fn write_report_dir(
    dir: &Path,
    summary: &Summary,
    totals: &Totals,
    timeline: &[TimelinePoint],
    warmup_s: f64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating --report {}", dir.display()))?;
    for (name, histogram) in [
        ("cycle_latency_ms.hgrm", &totals.cycle_latency_us),
        ("append_latency_ms.hgrm", &totals.append_latency_us),
    ] {
        let path = dir.join(name);
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        write_hgrm(histogram, &mut file)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let path = dir.join("report.svg");
    write_chart(&path, summary, totals, timeline, warmup_s)
        .with_context(|| format!("drawing {}", path.display()))
}

/// Points of the percentile distribution chart: x = "nines" (`-log10(1 - q)`: 1 is p90, 2
/// is p99, 3 is p99.9), y = latency in microseconds.
fn distribution_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    (0..=50)
        .map(|step| {
            let nines = f64::from(step) / 10.0;
            let quantile = 1.0 - 10f64.powf(-nines);
            (nines, histogram.value_at_quantile(quantile) as f64)
        })
        .collect()
}

fn whole_number(value: &f64) -> String {
    thousands_f64(*value)
}

fn nines_label(nines: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let text = format!("{percent:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("p{text}")
}

/// Draws throughput and p50/p99 over time, and the percentile distributions, into one SVG.
fn write_chart(
    path: &Path,
    summary: &Summary,
    totals: &Totals,
    timeline: &[TimelinePoint],
    warmup_s: f64,
) -> anyhow::Result<()> {
    let chart_error = |error: &dyn std::fmt::Display| anyhow!("{error}");
    let root = SVGBackend::new(path, (1000, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(&e))?;
    let title = format!(
        "cairn-loadgen {}: {} clients, {} keys, zipf {}, batch {} x {} B",
        summary.workload,
        summary.clients,
        summary.keys,
        summary.zipf,
        summary.batch,
        summary.value_bytes
    );
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| chart_error(&e))?;
    let panels = root.split_evenly((3, 1));
    let [throughput_area, latency_area, distribution_area] = panels.as_slice() else {
        return Err(anyhow!("split_evenly((3, 1)) gives 3 areas"));
    };
    let second_max = timeline.last().map_or(1.0, |point| point.second.max(1.0));
    let warmup_line = |top: f64| vec![(warmup_s, 0.0), (warmup_s, top)];

    let rate_max = timeline
        .iter()
        .map(|point| point.counts.successes.max(point.counts.conflicts) as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(throughput_area)
        .caption("throughput (per second of the run)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..second_max, 0.0..rate_max)
        .map_err(|e| chart_error(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("per second")
        .y_label_formatter(&whole_number)
        .draw()
        .map_err(|e| chart_error(&e))?;
    for (label, color, pick) in [
        (
            "successes/s",
            BLUE,
            (|c: &Counts| c.successes) as fn(&Counts) -> u64,
        ),
        ("conflicts/s", RED, |c: &Counts| c.conflicts),
    ] {
        chart
            .draw_series(LineSeries::new(
                timeline
                    .iter()
                    .map(|point| (point.second, pick(&point.counts) as f64)),
                color,
            ))
            .map_err(|e| chart_error(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    let warmup_style = BLACK.mix(0.5).stroke_width(2);
    chart
        .draw_series(LineSeries::new(warmup_line(rate_max), warmup_style))
        .map_err(|e| chart_error(&e))?
        .label("end of warm-up")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], warmup_style));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_error(&e))?;

    let latency_max = timeline
        .iter()
        .map(|point| point.cycle_latency_us_p99 as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(latency_area)
        .caption("cycle latency per second of the run", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..second_max, 0.0..latency_max)
        .map_err(|e| chart_error(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency (µs)")
        .y_label_formatter(&whole_number)
        .draw()
        .map_err(|e| chart_error(&e))?;
    for (label, color, pick) in [
        (
            "p50",
            BLUE,
            (|p: &TimelinePoint| p.cycle_latency_us_p50) as fn(&TimelinePoint) -> u64,
        ),
        ("p99", RED, |p: &TimelinePoint| p.cycle_latency_us_p99),
    ] {
        chart
            .draw_series(LineSeries::new(
                timeline
                    .iter()
                    .filter(|point| point.counts.successes > 0)
                    .map(|point| (point.second, pick(point) as f64)),
                color,
            ))
            .map_err(|e| chart_error(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(warmup_line(latency_max), warmup_style))
        .map_err(|e| chart_error(&e))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_error(&e))?;

    let cycle_points = distribution_points(&totals.cycle_latency_us);
    let append_points = distribution_points(&totals.append_latency_us);
    let distribution_max = cycle_points
        .iter()
        .chain(&append_points)
        .map(|(_, latency)| *latency)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(distribution_area)
        .caption(
            "latency by percentile (measured window)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..5.0, 0.0..distribution_max)
        .map_err(|e| chart_error(&e))?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .y_label_formatter(&whole_number)
        .draw()
        .map_err(|e| chart_error(&e))?;
    for (label, color, points) in [
        ("cycle", BLUE, cycle_points),
        ("append", GREEN, append_points),
    ] {
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(|e| chart_error(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_error(&e))?;
    root.present().map_err(|e| chart_error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::stats::latency_histogram;

    fn summary() -> Summary {
        let args =
            Args::try_parse_from(["cairn-loadgen", "--keys", "1", "--clients", "8"]).unwrap();
        let mut totals = Totals {
            counts: Counts {
                successes: 1000,
                records: 1000,
                conflicts: 250,
                abandoned: 3,
                errors: 0,
            },
            ..Totals::default()
        };
        for latency_us in 1..=1000 {
            totals.cycle_latency_us.saturating_record(latency_us);
            totals
                .append_latency_us
                .saturating_record(latency_us / 2 + 1);
        }
        Summary::new(&args, &totals, 2.0)
    }

    #[test]
    fn json_has_exactly_the_documented_fields_as_numbers() {
        let json = summary().to_json();
        let object = json.as_object().unwrap();
        let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
        fields.sort_unstable();
        let mut expected = vec![
            "workload",
            "connections",
            "contention",
            "clients",
            "keys",
            "zipf",
            "batch",
            "value_bytes",
            "duration_s",
            "successes",
            "successes_per_sec",
            "records_per_sec",
            "bytes_per_sec",
            "conflicts",
            "conflicts_per_success",
            "abandoned",
            "errors",
            "cycle_latency_us",
            "append_latency_us",
        ];
        expected.sort_unstable();
        assert_eq!(fields, expected);
        for (name, value) in object {
            match name.as_str() {
                "workload" => assert_eq!(value, "hot"),
                "connections" => assert_eq!(value, "shared"),
                "contention" => assert_eq!(value, "queue"),
                "cycle_latency_us" | "append_latency_us" => {
                    let percentiles = value.as_object().unwrap();
                    let mut names: Vec<&str> = percentiles.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    assert_eq!(names, ["max", "p50", "p90", "p99", "p999"]);
                    assert!(percentiles.values().all(serde_json::Value::is_u64));
                }
                _ => assert!(value.is_number(), "{name} is {value}"),
            }
        }
        assert_eq!(json["keys"], 1);
        assert_eq!(json["clients"], 8);
        assert_eq!(json["successes"], 1000);
        assert_eq!(json["successes_per_sec"], 500.0);
        assert_eq!(json["bytes_per_sec"], 50_000.0);
        assert_eq!(json["conflicts_per_success"], 0.25);
        assert_eq!(json["cycle_latency_us"]["max"], 1000);
        let p99 = json["cycle_latency_us"]["p99"].as_u64().unwrap();
        assert!((985..=995).contains(&p99), "{p99}");
    }

    #[test]
    fn empty_run_reports_zeros_not_nan() {
        let args = Args::try_parse_from(["cairn-loadgen"]).unwrap();
        let json = Summary::new(&args, &Totals::default(), 0.0).to_json();
        assert_eq!(json["successes_per_sec"], 0.0);
        assert_eq!(json["conflicts_per_success"], 0.0);
        assert_eq!(json["cycle_latency_us"]["p99"], 0);
    }

    #[test]
    fn hgrm_has_header_rows_and_footer() {
        let mut histogram = latency_histogram();
        for latency_us in [100, 200, 300, 4000] {
            histogram.saturating_record(latency_us);
        }
        let mut out = Vec::new();
        write_hgrm(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().trim_start().starts_with("Value"));
        assert_eq!(lines.next().unwrap(), "");
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(first[0], "0.100");
        // Max is the top of its 0.1% bucket, as HdrHistogram reports it.
        assert!(text.contains("#[Max     =        4.001, Total count    =            4]"));
        assert!(text.contains("SubBuckets     =         2048]"));
        // The last row is p100, without the 1/(1-p) column.
        let last_row = text
            .lines()
            .rev()
            .find(|line| !line.starts_with('#'))
            .unwrap();
        let fields: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{last_row}");
        assert_eq!(fields[1], "1.000000000000");
    }

    #[test]
    fn report_dir_has_histograms_and_a_chart() {
        let dir = tempfile::tempdir().unwrap();
        let summary = summary();
        let mut totals = Totals::default();
        totals.cycle_latency_us.saturating_record(120);
        totals.append_latency_us.saturating_record(80);
        let timeline: Vec<TimelinePoint> = (1..=3)
            .map(|second| TimelinePoint {
                second: f64::from(second),
                counts: Counts {
                    successes: 100,
                    conflicts: 10,
                    ..Counts::default()
                },
                cycle_latency_us_p50: 100,
                cycle_latency_us_p99: 200,
            })
            .collect();
        write_report_dir(dir.path(), &summary, &totals, &timeline, 1.0).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("successes/s"));
        assert!(svg.contains("p99.9"));
        for name in ["cycle_latency_ms.hgrm", "append_latency_ms.hgrm"] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
