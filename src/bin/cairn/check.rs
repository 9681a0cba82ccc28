//! `cairn check DATA_DIR`: offline verification of a stopped server's data directory, by
//! the engine's own recovery (`cairn_engine::io::recovery::scan_data_dir`), so that what
//! it calls damage is exactly what would make `cairn serve` refuse to open the directory.
//!
//! Exit statuses: 0 clean; [`EXIT_DAMAGED`] (65, EX_DATAERR) damage found in at least one
//! shard; 1 the directory could not be checked (not a data directory, in use by a server,
//! unreadable).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cairn_engine::error::OpenError;
use cairn_engine::io::recovery::{ShardScan, scan_data_dir};
use cairn_engine::io::segment::segment_file_name;
use cairn_engine::{Catalog, PartitionId};
use serde_json::json;

/// Exit status of `cairn check` when it found damage (EX_DATAERR).
pub const EXIT_DAMAGED: u8 = 65;

/// Where damage is: the segment file and, when the error names one, the byte position.
fn damage_place(error: &OpenError) -> Option<(&Path, Option<u64>)> {
    match error {
        OpenError::Damaged { path, position, .. }
        | OpenError::Inconsistent { path, position, .. } => Some((path, Some(*position))),
        // A header that does not verify is block 0 of its file.
        OpenError::BadSegmentHeader { path, .. } => Some((path, Some(0))),
        OpenError::MissingSegment { path } => Some((path, None)),
        OpenError::CoveredDamage { path, position, .. } => Some((path, Some(*position))),
        OpenError::CheckpointRequired { path } => Some((path, None)),
        _ => None,
    }
}

/// "topic T partition N" for a partition id, or "" when the catalog does not name it.
fn partition_name(catalog: &Catalog, partition: PartitionId) -> Option<(String, u32)> {
    catalog
        .topics()
        .iter()
        .find(|topic| topic.partition_ids().any(|id| id == partition))
        .map(|topic| (topic.name.clone(), partition.0 - topic.first_partition_id))
}

pub fn check(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (catalog, scans) = scan_data_dir(data_dir, &mut |_, _, _, _, _| {})
        .with_context(|| format!("checking {}", data_dir.display()))?;
    let damaged_count = scans.iter().filter(|scan| scan.damage.is_some()).count();
    if json {
        let shards: Vec<_> = scans
            .iter()
            .map(|scan| shard_json(data_dir, &catalog, scan))
            .collect();
        println!(
            "{}",
            json!({
                "data_dir": data_dir.display().to_string(),
                "clean": damaged_count == 0,
                "shards": shards,
            })
        );
    } else {
        println!(
            "data directory {}: {} shard(s), {} topic(s)",
            data_dir.display(),
            scans.len(),
            catalog.topics().len()
        );
        for scan in &scans {
            print_shard(data_dir, &catalog, scan);
        }
        if damaged_count == 0 {
            println!("clean: every segment verified");
        } else {
            println!(
                "DAMAGED: {damaged_count} shard(s); see RELIABILITY.md, \"Damage\", and `cairn repair`"
            );
        }
    }
    Ok(if damaged_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DAMAGED)
    })
}

fn segment_path(data_dir: &Path, scan: &ShardScan, segment_index: u64) -> PathBuf {
    data_dir
        .join(format!("core-{}", scan.shard_id.0))
        .join(segment_file_name(segment_index))
}

fn print_shard(data_dir: &Path, catalog: &Catalog, scan: &ShardScan) {
    let end = match (&scan.end, &scan.damage) {
        (_, Some(_)) => "damaged".to_owned(),
        (None, None) => "empty".to_owned(),
        (Some(end), None) => format!(
            "valid end at segment {} position {} ({})",
            end.segment_index,
            end.position,
            segment_path(data_dir, scan, end.segment_index).display()
        ),
    };
    println!(
        "shard {}: {} segment file(s), {end}",
        scan.shard_id.0, scan.segment_count
    );
    if let Some(error) = &scan.damage {
        match damage_place(error) {
            Some((path, Some(position))) => {
                println!("  DAMAGE at {} position {position}", path.display());
            }
            Some((path, None)) => println!("  DAMAGE at {}", path.display()),
            None => {}
        }
        println!("  {error}");
    }
    for partition in &scan.partitions {
        let name = partition_name(catalog, partition.partition_id)
            .map_or_else(String::new, |(topic, index)| {
                format!(" (topic {topic} partition {index})")
            });
        println!(
            "  partition {}{name}: offsets {}..{}, {} key(s), {} batch(es)",
            partition.partition_id.0,
            partition.offsets_start.0,
            partition.offsets_end.0,
            partition.key_count,
            partition.batch_count
        );
    }
}

fn shard_json(data_dir: &Path, catalog: &Catalog, scan: &ShardScan) -> serde_json::Value {
    let end = scan.end.as_ref().map(|end| {
        json!({
            "segment": end.segment_index,
            "position": end.position,
            "path": segment_path(data_dir, scan, end.segment_index).display().to_string(),
        })
    });
    let damage = scan.damage.as_ref().map(|error| {
        let place = damage_place(error);
        json!({
            "path": place.map(|(path, _)| path.display().to_string()),
            "position": place.and_then(|(_, position)| position),
            "message": error.to_string(),
        })
    });
    let partitions: Vec<_> = scan
        .partitions
        .iter()
        .map(|partition| {
            let name = partition_name(catalog, partition.partition_id);
            json!({
                "partition_id": partition.partition_id.0,
                "topic": name.as_ref().map(|(topic, _)| topic),
                "partition": name.as_ref().map(|(_, index)| index),
                "offsets_start": partition.offsets_start.0,
                "offsets_end": partition.offsets_end.0,
                "key_count": partition.key_count,
                "batch_count": partition.batch_count,
            })
        })
        .collect();
    json!({
        "shard": scan.shard_id.0,
        "segment_count": scan.segment_count,
        "end": end,
        "damage": damage,
        "partitions": partitions,
    })
}
