//! `cairn dump`: prints batches and records, for debugging, either of one segment file
//! (`--segment PATH`: every batch whose own checksum verifies, found as recovery's damage
//! probe finds them, including stale ones beyond the log's end) or of a partition's offset
//! range in a stopped server's data directory (the batches recovery accepts, in log order).
//! Keys, values and headers are printed with non-printable bytes escaped (`\xNN`), or in
//! hex with `--hex`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use cairn_engine::core::record::{BatchView, decode_batch};
use cairn_engine::core::recovery::{BlockProbe, probe_block_starts};
use cairn_engine::core::segment_header::{SEGMENT_HEADER_SIZE_BYTES, SegmentHeader};
use cairn_engine::io::recovery::scan_data_dir;
use cairn_engine::{Catalog, PartitionId};
use serde_json::json;

#[derive(clap::Args)]
pub struct DumpArgs {
    /// Data directory of a stopped server (with --topic and --partition).
    #[arg(required_unless_present = "segment")]
    data_dir: Option<PathBuf>,
    /// Dump this segment file instead (no data directory, lock or recovery needed).
    #[arg(long, conflicts_with_all = ["data_dir", "topic"])]
    segment: Option<PathBuf>,
    /// Topic whose partition to dump.
    #[arg(long, requires = "partition", required_unless_present = "segment")]
    topic: Option<String>,
    /// Partition number within the topic.
    #[arg(long, requires = "topic")]
    partition: Option<u32>,
    /// First offset to print.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Offset to stop before (exclusive); default: the partition's end.
    #[arg(long)]
    to: Option<u64>,
    /// Print keys, values and header values in hex instead of escaped text.
    #[arg(long)]
    hex: bool,
}

pub fn dump(args: &DumpArgs, json: bool) -> anyhow::Result<ExitCode> {
    let printer = Printer {
        hex: args.hex,
        json,
    };
    if let Some(path) = &args.segment {
        return dump_segment(path, &printer);
    }
    let (Some(data_dir), Some(topic), Some(partition)) =
        (&args.data_dir, &args.topic, args.partition)
    else {
        bail!("give --segment PATH, or DATA_DIR with --topic and --partition");
    };
    let range = args.from..args.to.unwrap_or(u64::MAX);
    let resolve = |catalog: &Catalog| -> anyhow::Result<PartitionId> {
        catalog
            .topic(topic)
            .with_context(|| format!("no topic named {topic:?}"))?
            .partition_id(partition)
            .with_context(|| format!("topic {topic:?} has no partition {partition}"))
    };
    // The partition's id is known once the catalog is read, under the directory's lock.
    let mut partition_id: Option<PartitionId> = None;
    let mut printed_count = 0u64;
    let (catalog, scans) =
        scan_data_dir(data_dir, &mut |catalog,
                                      shard,
                                      segment_index,
                                      position,
                                      batch| {
            let Some(id) = partition_id.or_else(|| resolve(catalog).ok()) else {
                return;
            };
            partition_id = Some(id);
            let overlaps = batch.base_offset().0 < range.end && batch.end_offset().0 > range.start;
            if batch.partition_id() == id && overlaps {
                let place = format!(
                    "core-{}/{} position {position}",
                    shard.0,
                    cairn_engine::io::segment::segment_file_name(segment_index)
                );
                printer.batch(&place, position, batch, &range);
                printed_count += 1;
            }
        })?;
    resolve(&catalog)?;
    for scan in &scans {
        if let Some(error) = &scan.damage {
            eprintln!(
                "cairn: shard {} is damaged; its log is dumped up to the damage: {error}",
                scan.shard_id.0
            );
        }
    }
    if !json {
        println!("{printed_count} batch(es)");
    }
    Ok(ExitCode::SUCCESS)
}

fn dump_segment(path: &Path, printer: &Printer) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match SegmentHeader::decode(&bytes) {
        Ok(header) if printer.json => println!(
            "{}",
            json!({"segment_header": {
                "shard_id": header.shard_id.0,
                "shard_count": header.shard_count,
                "segment_index": header.segment_index,
                "segment_size_bytes": header.segment_size_bytes,
                "file_size_bytes": bytes.len(),
            }})
        ),
        Ok(header) => println!(
            "segment {}: shard {} of {}, index {}, size {} bytes (file: {} bytes)",
            path.display(),
            header.shard_id.0,
            header.shard_count,
            header.segment_index,
            header.segment_size_bytes,
            bytes.len()
        ),
        Err(error) => eprintln!("cairn: {}: segment header: {error}", path.display()),
    }
    let data_start = SEGMENT_HEADER_SIZE_BYTES as u64;
    let data = bytes.get(SEGMENT_HEADER_SIZE_BYTES..).unwrap_or_default();
    let block = cairn_engine::core::limits::BLOCK_SIZE_BYTES as u64;
    let mut chain_crc: Option<u32> = None;
    let mut probe_from = data_start;
    let mut batch_count = 0u64;
    // Groups start at block boundaries and hold batches back to back: probe each boundary,
    // then follow the group, as recovery does beyond a log's end.
    while let BlockProbe::Found { position, batch } =
        probe_block_starts(data, data_start, probe_from, true)
    {
        let mut next = Some((position, batch));
        let mut after = position;
        while let Some((batch_position, batch)) = next {
            let chained = chain_crc.is_none_or(|crc| crc == batch.prev_batch_crc());
            let place = format!(
                "position {batch_position}{}",
                if chained { "" } else { " (chain breaks here)" }
            );
            printer.batch(&place, batch_position, &batch, &(0..u64::MAX));
            batch_count += 1;
            chain_crc = Some(batch.crc());
            after = batch_position + batch.len_bytes() as u64;
            next = usize::try_from(after - data_start)
                .ok()
                .and_then(|start| data.get(start..))
                .and_then(|rest| decode_batch(rest).ok())
                .map(|batch| (after, batch));
        }
        probe_from = after.div_ceil(block) * block;
    }
    if !printer.json {
        println!("{batch_count} valid batch(es)");
    }
    Ok(ExitCode::SUCCESS)
}

struct Printer {
    hex: bool,
    json: bool,
}

impl Printer {
    fn bytes(&self, bytes: &[u8]) -> String {
        if self.hex {
            bytes.iter().map(|byte| format!("{byte:02x}")).collect()
        } else {
            bytes.escape_ascii().to_string()
        }
    }

    /// One batch and its records within `range`.
    fn batch(
        &self,
        place: &str,
        position: u64,
        batch: &BatchView<'_>,
        range: &std::ops::Range<u64>,
    ) {
        let records = batch
            .records()
            .filter(|record| range.contains(&record.offset.0));
        let producer = batch.producer().map(|stamp| {
            json!({
                "producer_id": stamp.producer_id,
                "epoch": stamp.epoch,
                "base_sequence": stamp.base_sequence,
            })
        });
        if self.json {
            let records: Vec<_> = records
                .map(|record| {
                    let headers: Vec<_> = record
                        .headers()
                        .map(|header| json!([self.bytes(header.name), self.bytes(header.value)]))
                        .collect();
                    json!({
                        "offset": record.offset.0,
                        "timestamp_ms": record.timestamp_ms(),
                        "key": (!record.is_null_key()).then(|| self.bytes(record.key)),
                        "value": (!record.is_null_value()).then(|| self.bytes(record.value)),
                        "headers": headers,
                        "prev_key_offset": record.prev_key_offset.map(|offset| offset.0),
                    })
                })
                .collect();
            println!(
                "{}",
                json!({
                    "place": place,
                    "position": position,
                    "partition_id": batch.partition_id().0,
                    "base_offset": batch.base_offset().0,
                    "end_offset": batch.end_offset().0,
                    "record_count": batch.record_count(),
                    "len_bytes": batch.len_bytes(),
                    "format_version": batch.format_version(),
                    "timestamp_ms": batch.timestamp_ms(),
                    "max_record_timestamp_ms": batch.max_record_timestamp_ms(),
                    "crc": format!("{:08x}", batch.crc()),
                    "prev_batch_crc": format!("{:08x}", batch.prev_batch_crc()),
                    "producer": producer,
                    "records": records,
                })
            );
            return;
        }
        let producer = batch.producer().map_or("-".to_owned(), |stamp| {
            format!(
                "id={} epoch={} base_sequence={}",
                stamp.producer_id, stamp.epoch, stamp.base_sequence
            )
        });
        println!(
            "batch at {place}: partition {} offsets {}..{} ({} records, {} bytes, format {}) \
             timestamp_ms={} max_record_timestamp_ms={} crc={:08x} prev_batch_crc={:08x} \
             producer {producer}",
            batch.partition_id().0,
            batch.base_offset().0,
            batch.end_offset().0,
            batch.record_count(),
            batch.len_bytes(),
            batch.format_version(),
            batch.timestamp_ms(),
            batch.max_record_timestamp_ms(),
            batch.crc(),
            batch.prev_batch_crc(),
        );
        for record in records {
            let text = |is_null: bool, bytes: &[u8]| {
                if is_null {
                    "null".to_owned()
                } else {
                    format!("\"{}\"", self.bytes(bytes))
                }
            };
            let headers: Vec<String> = record
                .headers()
                .map(|header| format!("{}={}", self.bytes(header.name), self.bytes(header.value)))
                .collect();
            println!(
                "  offset {} timestamp_ms={} key={} prev_key={} headers=[{}] value={}",
                record.offset.0,
                record.timestamp_ms(),
                text(record.is_null_key(), record.key),
                record
                    .prev_key_offset
                    .map_or("-".to_owned(), |offset| offset.0.to_string()),
                headers.join(","),
                text(record.is_null_value(), record.value),
            );
        }
    }
}
