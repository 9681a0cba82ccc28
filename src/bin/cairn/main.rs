//! `cairn`: the server (`cairn serve`) and a command-line client for people at a terminal.
//!
//! Exit statuses: 0 success, 1 error, 2 usage (a bad flag or config file), 3 a condition
//! failed (conflict), 65 `cairn check` found damage, 70 the server found its own state
//! contradicting itself, 74 the server stopped on a storage failure.
//!
//! Test-only: `cairn serve` reads `CAIRN_FAULT_INJECT` (see [`FAULT_INJECT_ENV`]) to make
//! chosen writes, syncs or segment preparations fail, so that the reliability tests can
//! watch the whole server fail-stop or ride out a full disk. Never set it in production.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_client::{
    AppendResult, BlockingClient, ClientConfig, FetchedRecord, RetentionChange, RetentionPolicy,
};
use cairn_engine::{
    FaultHook, FaultPoint, FaultPolicy, KeyCondition, Offset, RecordHeader, RecordInput,
};
use cairn_server::{KafkaConfig, ServerConfig, ShutdownSignal};
use cairn_wire::{self as wire, ConflictInfo};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::json;

use crate::config::ServeArgs;

mod check;
mod config;
mod dump;

/// Exit status of a usage error: a bad flag (clap's own), config file or setting.
const EXIT_USAGE: u8 = 2;

/// Exit status when a conditional append was rejected.
const EXIT_CONFLICT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A partitioned log with conditional appends"
)]
struct Cli {
    /// Server address for client commands.
    #[arg(long, global = true, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Create, list, describe or change topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Append one record, optionally conditional.
    Append(AppendArgs),
    /// Read records of a partition from an offset on.
    ///
    /// With `--group G`, each partition (`--partition`, or every partition of the topic)
    /// resumes from the group's committed offset (0 if none), and the offset after each
    /// printed chunk is committed for the group, so a second run prints only what is new.
    /// The same committed offsets as a Kafka consumer of group G.
    Fetch {
        topic: String,
        /// Required without `--group`.
        #[arg(long)]
        partition: Option<u32>,
        #[arg(long, default_value_t = 0, conflicts_with = "group")]
        from: u64,
        /// Consumer group whose committed offsets to resume from and commit.
        #[arg(long)]
        group: Option<String>,
        /// Keep waiting for new records (long-poll) until interrupted.
        #[arg(long)]
        follow: bool,
        #[arg(long, default_value_t = 1024 * 1024)]
        max_bytes: u32,
    },
    /// The latest record of a key (its offset is what the next `--expect` wants).
    ReadKey {
        topic: String,
        key: String,
        /// Include appended records that are not synced yet (`--pending` is its old name,
        /// still accepted).
        #[arg(long = "appended", alias = "pending")]
        include_appended: bool,
    },
    /// A key's records, newest first, following the back-pointers.
    ///
    /// Prints at most --limit records (the server returns at most 1024 per request); when
    /// the history goes on, says on stderr which --from continues it.
    History {
        topic: String,
        key: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start at this record of the key (a previous run's continuation offset) instead
        /// of at its latest.
        #[arg(long = "from")]
        from_offset: Option<u64>,
    },
    /// The partition a key routes to in a topic.
    PartitionOf { topic: String, key: String },
    /// Verify a stopped server's data directory (offline): every segment of every shard.
    ///
    /// Takes the data directory's lock (refused while a server runs on it) and scans each
    /// shard's core log with the server's own recovery: checksums, the chain, partition
    /// offsets. Prints per shard the valid end, per partition its offsets and key count,
    /// and any damage by segment file and byte position. Exit status: 0 clean, 65 damage
    /// found, 1 could not check.
    Check {
        /// Data directory.
        data_dir: PathBuf,
    },
    /// Print the batches and records of a segment file or of a partition's offset range.
    Dump(dump::DumpArgs),
    /// Take an online, consistent backup of the server at `--addr` into DEST.
    ///
    /// Every record acknowledged before the backup starts is in it (the backup point,
    /// printed per partition as its end offset), nothing is torn, and `cairn serve
    /// --data-dir DEST` (same `--cores`) serves it. DEST must not exist or be empty; until
    /// the backup completes it holds a `backup-incomplete` marker and no server opens it.
    Backup {
        /// The new data directory.
        dest: PathBuf,
    },
    /// Truncate a damaged core log before the damage (offline: stop the server first).
    ///
    /// When `cairn serve` refuses to start because a core log is damaged (a bad block with
    /// valid data after it, a missing segment), this drops everything after the last valid
    /// batch before the damage, moves (or copies) the affected segment files into
    /// `core-N/damaged-<time>/`, and prints, per partition, the offsets that are lost.
    /// Those offsets will be given out again to new appends: tell the consumers.
    Repair {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Required: the consent to drop acknowledged records after the damage.
        #[arg(long)]
        truncate_at_damage: bool,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic with a fixed partition count; it keeps its whole history unless
    /// a retention limit is given.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Remove a partition's records once older than this (ms); `forever` or -1: no limit.
        #[arg(long, value_parser = parse_limit, allow_hyphen_values = true)]
        retention_ms: Option<RetentionLimit>,
        /// Remove a partition's oldest records while it holds more than this (bytes);
        /// `forever` or -1: no limit.
        #[arg(long, value_parser = parse_limit, allow_hyphen_values = true)]
        retention_bytes: Option<RetentionLimit>,
    },
    /// List topics and which shard owns each partition.
    List,
    /// Show a topic: its partitions and retention.
    Describe { name: String },
    /// Change a topic's retention; a limit not given stays as it is.
    Alter {
        name: String,
        /// `forever` (or -1) removes the age limit.
        #[arg(long, value_parser = parse_limit, allow_hyphen_values = true)]
        retention_ms: Option<RetentionLimit>,
        /// `forever` (or -1) removes the size limit.
        #[arg(long, value_parser = parse_limit, allow_hyphen_values = true)]
        retention_bytes: Option<RetentionLimit>,
    },
}

/// A retention limit as the CLI takes it: a positive number, or none (`forever`, -1).
#[derive(Clone, Copy, Debug)]
struct RetentionLimit(Option<u64>);

fn parse_limit(text: &str) -> Result<RetentionLimit, String> {
    match text {
        "forever" | "-1" => Ok(RetentionLimit(None)),
        _ => match text.parse::<u64>() {
            Ok(0) => Err("0 would remove every record at once; use forever for no limit".into()),
            Ok(limit) => Ok(RetentionLimit(Some(limit))),
            Err(_) => Err(format!("{text:?} is not a positive integer or forever")),
        },
    }
}

/// A limit for people: the number, or `forever`.
fn show_limit(limit: Option<u64>) -> String {
    limit.map_or_else(|| "forever".to_owned(), |limit| limit.to_string())
}

fn topic_json(topic: &cairn_client::TopicInfo) -> serde_json::Value {
    let partitions: Vec<_> = topic
        .partitions
        .iter()
        .map(|p| json!({"partition": p.partition, "shard": p.shard, "port": p.port}))
        .collect();
    json!({
        "topic": topic.name,
        "partitions": partitions,
        "retention_ms": topic.retention.ms,
        "retention_bytes": topic.retention.bytes,
    })
}

fn print_topic(topic: &cairn_client::TopicInfo) {
    println!("topic {}", topic.name);
    println!("  partitions       {}", topic.partitions.len());
    println!("  retention.ms     {}", show_limit(topic.retention.ms));
    println!("  retention.bytes  {}", show_limit(topic.retention.bytes));
    for partition in &topic.partitions {
        println!(
            "  partition {}\tshard {}\tport {}",
            partition.partition, partition.shard, partition.port
        );
    }
}

#[derive(clap::Args)]
struct AppendArgs {
    topic: String,
    /// The value to append.
    value: String,
    /// Partition number; default: derived from the key.
    #[arg(long)]
    partition: Option<u32>,
    /// The record's key.
    #[arg(long, default_value = "")]
    key: String,
    /// Require the partition's end offset to be this.
    #[arg(long)]
    expect_end_offset: Option<u64>,
    /// Key condition: no-key, exists, or an offset (the key's latest record is there).
    #[arg(long)]
    expect: Option<String>,
    /// A header, name=value; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn repair(data_dir: &std::path::Path, truncate_at_damage: bool) -> anyhow::Result<ExitCode> {
    if !truncate_at_damage {
        bail!(
            "repair drops acknowledged records after the damage; pass --truncate-at-damage to \
             say you accept that"
        );
    }
    let shard_count = cairn_engine::io::data_dir::recorded_shard_count(data_dir)?
        .with_context(|| format!("{} is not a cairn data directory", data_dir.display()))?;
    let mut config = cairn_engine::EngineConfig::new(data_dir, shard_count);
    // A segment prepared during the repair is no larger than the log's first one.
    if let Ok(metadata) =
        std::fs::metadata(data_dir.join("core-0").join("00000000000000000000.seg"))
    {
        config.segment_size_bytes = metadata.len();
    }
    let (catalog, reports) = cairn_engine::io::recovery::repair_data_dir(config)
        .with_context(|| format!("repairing {}", data_dir.display()))?;
    if reports.is_empty() {
        println!(
            "no damage found in {}; nothing was changed",
            data_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for report in &reports {
        println!(
            "shard {}: log truncated at segment {} position {}; {} segment file(s) moved and the \
             truncated one copied to {}",
            report.shard_id.0,
            report.segment_index,
            report.position,
            report.dropped_segment_count,
            report.quarantine_dir.display()
        );
        for (partition, start, end) in &report.lost_offsets {
            let topic = catalog
                .topics()
                .iter()
                .find(|topic| topic.partition_ids().any(|id| id == *partition));
            let place = topic.map_or_else(String::new, |topic| {
                format!(
                    " (topic {} partition {})",
                    topic.name,
                    partition.0 - topic.first_partition_id
                )
            });
            println!(
                "  partition {}{place}: offsets {}..{} lost ({} records); they will be given out \
                 again",
                partition.0,
                start.0,
                end.0,
                end.0 - start.0
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn backup(
    client: &mut BlockingClient,
    dest: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = cairn_client::backup::take_backup(client, dest).with_context(|| {
        format!(
            "backup into {} failed; it is incomplete and no server will open it (marker {}): \
             remove it and take the backup again",
            dest.display(),
            cairn_client::backup::incomplete_marker(dest).display()
        )
    })?;
    if json {
        let partitions: Vec<_> = report
            .partition_ends
            .iter()
            .map(|(topic, partition, end)| {
                json!({"topic": topic, "partition": partition, "end_offset": end.0})
            })
            .collect();
        println!(
            "{}",
            json!({"path": report.path, "copied_bytes": report.copied_bytes, "partitions": partitions})
        );
    } else {
        println!(
            "backup complete in {} ({} bytes of segments); backup point:",
            report.path.display(),
            report.copied_bytes
        );
        for (topic, partition, end) in &report.partition_ends {
            println!("  {topic}\tpartition {partition}\tend offset {}", end.0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let serve_matches = matches.subcommand_matches("serve").cloned();
    match run(cli, serve_matches) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cairn: {error:#}");
            if error.downcast_ref::<config::UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli, serve_matches: Option<clap::ArgMatches>) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    let client = || {
        BlockingClient::connect(ClientConfig::new(cli.addr))
            .with_context(|| format!("connecting to {}", cli.addr))
    };
    match cli.command {
        Command::Serve(args) => {
            let matches = serve_matches.context("the serve subcommand's flags")?;
            serve(args.with_file(&matches)?)
        }
        Command::Repair {
            data_dir,
            truncate_at_damage,
        } => repair(&data_dir, truncate_at_damage),
        Command::Check { data_dir } => check::check(&data_dir, json),
        Command::Dump(args) => dump::dump(&args, json),
        Command::Backup { dest } => backup(&mut client()?, &dest, json),
        Command::Topic {
            command:
                TopicCommand::Create {
                    name,
                    partitions,
                    retention_ms,
                    retention_bytes,
                },
        } => {
            let retention = RetentionPolicy {
                ms: retention_ms.and_then(|limit| limit.0),
                bytes: retention_bytes.and_then(|limit| limit.0),
            };
            let topic = client()?.create_topic_with(&name, partitions, retention)?;
            if json {
                println!(
                    "{}",
                    json!({
                        "topic": topic.name,
                        "partitions": topic.partitions.len(),
                        "retention_ms": topic.retention.ms,
                        "retention_bytes": topic.retention.bytes,
                    })
                );
            } else {
                println!(
                    "created topic {} with {} partitions",
                    topic.name,
                    topic.partitions.len()
                );
                if !topic.retention.is_forever() {
                    println!(
                        "retention.ms {} retention.bytes {}",
                        show_limit(topic.retention.ms),
                        show_limit(topic.retention.bytes)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topic {
            command: TopicCommand::Describe { name },
        } => {
            let metadata = client()?.metadata()?;
            let Some(topic) = metadata.topics.iter().find(|topic| topic.name == name) else {
                bail!("no topic named {name:?}");
            };
            if json {
                println!("{}", topic_json(topic));
            } else {
                print_topic(topic);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topic {
            command:
                TopicCommand::Alter {
                    name,
                    retention_ms,
                    retention_bytes,
                },
        } => {
            if retention_ms.is_none() && retention_bytes.is_none() {
                bail!("nothing to change: give --retention-ms and/or --retention-bytes");
            }
            let change = RetentionChange {
                ms: retention_ms.map(|limit| limit.0),
                bytes: retention_bytes.map(|limit| limit.0),
            };
            let topic = client()?.alter_topic_retention(&name, change)?;
            if json {
                println!("{}", topic_json(&topic));
            } else {
                print_topic(&topic);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topic {
            command: TopicCommand::List,
        } => {
            let metadata = client()?.metadata()?;
            if json {
                let topics: Vec<_> = metadata.topics.iter().map(topic_json).collect();
                println!(
                    "{}",
                    json!({"shard_ports": metadata.shard_ports, "topics": topics})
                );
            } else {
                for topic in &metadata.topics {
                    let retention = if topic.retention.is_forever() {
                        String::new()
                    } else {
                        format!(
                            "\tretention.ms {} retention.bytes {}",
                            show_limit(topic.retention.ms),
                            show_limit(topic.retention.bytes)
                        )
                    };
                    println!(
                        "{}\t{} partitions{retention}",
                        topic.name,
                        topic.partitions.len()
                    );
                    for partition in &topic.partitions {
                        println!(
                            "  partition {}\tshard {}\tport {}",
                            partition.partition, partition.shard, partition.port
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Append(args) => append(&mut client()?, args, json),
        Command::Fetch {
            topic,
            partition,
            // clap refuses --from with --group.
            from: _,
            group: Some(group),
            follow,
            max_bytes,
        } => {
            let mut client = client()?;
            fetch_as_group(
                &mut client,
                &topic,
                partition,
                &group,
                follow,
                max_bytes,
                json,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch {
            topic,
            partition,
            from,
            group: None,
            follow,
            max_bytes,
        } => {
            let Some(partition) = partition else {
                bail!("--partition is required without --group");
            };
            let mut client = client()?;
            let mut offset = Offset(from);
            loop {
                let wait = if follow {
                    Duration::from_secs(10)
                } else {
                    Duration::ZERO
                };
                let fetched = client.fetch(&topic, partition, offset, max_bytes, wait)?;
                for record in &fetched.records {
                    print_record(record, None, json);
                    offset = record.offset.plus(1);
                }
                std::io::stdout().flush()?;
                if !follow && (fetched.records.is_empty() || offset >= fetched.synced_end) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        Command::ReadKey {
            topic,
            key,
            include_appended,
        } => {
            match client()?.read_key(&topic, None, key.as_bytes(), include_appended)? {
                Some(record) => print_record(&record, None, json),
                None if json => println!("null"),
                None => println!("key {key} has no record"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History {
            topic,
            key,
            limit,
            from_offset,
        } => {
            let page = client()?.key_history_from(
                &topic,
                None,
                key.as_bytes(),
                from_offset.map(Offset),
                limit,
            )?;
            for record in &page.records {
                print_record(record, None, json);
            }
            // On stderr, so that --json output stays one record per line.
            if let Some(next) = page.next_offset {
                eprintln!("more: cairn history {topic} {key} --from {}", next.0);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::PartitionOf { topic, key } => {
            let metadata = client()?.metadata()?;
            let Some(topic) = metadata.topics.iter().find(|t| t.name == topic) else {
                bail!("no topic named {topic:?}");
            };
            let count = u32::try_from(topic.partitions.len()).context("partition count")?;
            println!("{}", wire::partition_for_key(key.as_bytes(), count));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.print_config {
        print!("{}", args.to_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    config::init_logs(&args.log_level, args.log_format)?;
    let mut config = ServerConfig::new();
    config.data_dir = args.data_dir;
    config.listen = args.listen;
    config.port_base = args.port_base;
    if let Some(cores) = args.cores {
        config.shard_count = cores;
    }
    config.segment_size_bytes = args.segment_size;
    config.checkpoint_interval_bytes = args.checkpoint_interval;
    config.retention_check_interval =
        std::time::Duration::from_millis(args.retention_check_interval_ms);
    config.retention_bytes_per_second = args.retention_bytes_per_second;
    config.frame_size_bytes_max = args.max_frame_bytes;
    if let Some(bytes) = args.max_request_bytes_per_shard {
        config.shard_request_bytes_max = bytes;
    }
    if let Some(count) = args.max_connections_per_shard {
        config.shard_connection_count_max = count;
    }
    config.pin_shards = !args.no_pin;
    config.metrics_listen = args.metrics_listen;
    config.kafka = (!args.no_kafka).then_some(KafkaConfig {
        listen: args.kafka_listen,
        advertised_host: args.kafka_advertised_host,
    });
    if let Ok(spec) = std::env::var(FAULT_INJECT_ENV) {
        config.fault_hook = Some(parse_fault_spec(&spec)?);
        tracing::warn!(spec, "TEST-ONLY fault injection is active");
        eprintln!("cairn: TEST-ONLY fault injection is active: {FAULT_INJECT_ENV}={spec}");
    }
    let shutdown = ShutdownSignal::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.flag())
            .context("installing signal handler")?;
    }
    cairn_server::run(config, shutdown, |listening| {
        let ports: Vec<String> = listening.shard_ports.iter().map(u16::to_string).collect();
        let kafka_ports: Vec<String> = listening.kafka_ports.iter().map(u16::to_string).collect();
        let kafka = if kafka_ports.is_empty() {
            String::new()
        } else {
            format!(" kafka_ports={}", kafka_ports.join(","))
        };
        let metrics = listening
            .metrics_address
            .map(|address| format!(" metrics={address}"))
            .unwrap_or_default();
        // Tests and scripts wait for this line; it is printed once every shard accepts.
        println!(
            "listening on {} shard_ports={}{kafka}{metrics}",
            listening.address,
            ports.join(",")
        );
        let _ = std::io::stdout().flush();
    })?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// Test-only fault injection for `cairn serve`: comma-separated rules
/// `POINT:after=N[:count=M][:errno=E]`, where POINT is `write` (a group's write), `sync`
/// (its fdatasync) or `prepare` (preallocating a segment). The first N operations at POINT,
/// counted over all shards, succeed; the next M (default: every later one) fail with OS
/// error E (default 5, EIO; 28 is ENOSPC); later ones succeed again.
/// Example: `CAIRN_FAULT_INJECT=sync:after=100` or `prepare:after=4:count=3:errno=28`.
const FAULT_INJECT_ENV: &str = "CAIRN_FAULT_INJECT";

/// One rule of [`FAULT_INJECT_ENV`].
#[derive(Debug)]
struct FaultRule {
    point: FaultPoint,
    success_count: u64,
    failure_count: u64,
    errno: i32,
    /// Operations at `point` seen so far.
    seen_count: AtomicU64,
}

struct FaultRules(Vec<FaultRule>);

impl FaultPolicy for FaultRules {
    fn fail(&self, point: FaultPoint, _path: &std::path::Path) -> Option<i32> {
        self.0
            .iter()
            .filter(|rule| rule.point == point)
            .find_map(|rule| {
                let seen = rule.seen_count.fetch_add(1, Ordering::SeqCst);
                let failing =
                    seen >= rule.success_count && seen - rule.success_count < rule.failure_count;
                failing.then_some(rule.errno)
            })
    }
}

fn parse_fault_spec(spec: &str) -> anyhow::Result<FaultHook> {
    let mut rules = Vec::new();
    for text in spec
        .split(',')
        .map(str::trim)
        .filter(|text| !text.is_empty())
    {
        let mut fields = text.split(':');
        let point = match fields.next() {
            Some("write") => FaultPoint::Write,
            Some("sync") => FaultPoint::Sync,
            Some("prepare") => FaultPoint::Prepare,
            Some("index") => FaultPoint::IndexWrite,
            Some("checkpoint") => FaultPoint::CheckpointWrite,
            other => bail!(
                "{FAULT_INJECT_ENV}: {other:?} is not write, sync, prepare, index or checkpoint"
            ),
        };
        let mut rule = FaultRule {
            point,
            success_count: 0,
            failure_count: u64::MAX,
            errno: 5,
            seen_count: AtomicU64::new(0),
        };
        for field in fields {
            let (name, value) = field
                .split_once('=')
                .with_context(|| format!("{FAULT_INJECT_ENV}: {field:?} is not name=value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .with_context(|| format!("{FAULT_INJECT_ENV}: {field:?} wants a number"))
            };
            match name {
                "after" => rule.success_count = number()?,
                "count" => rule.failure_count = number()?,
                "errno" => rule.errno = i32::try_from(number()?).context("errno")?,
                _ => bail!("{FAULT_INJECT_ENV}: unknown field {name:?}"),
            }
        }
        rules.push(rule);
    }
    if rules.is_empty() {
        bail!("{FAULT_INJECT_ENV} is set but holds no rule");
    }
    Ok(FaultHook(Arc::new(FaultRules(rules))))
}

fn parse_condition(expect: Option<&str>) -> anyhow::Result<KeyCondition> {
    Ok(match expect {
        None => KeyCondition::Any,
        Some("no-key") => KeyCondition::NoKey,
        Some("exists") => KeyCondition::KeyExists,
        Some(offset) => {
            KeyCondition::At(Offset(offset.parse().with_context(|| {
                format!("--expect {offset:?}: want no-key, exists or an offset")
            })?))
        }
    })
}

fn describe_condition(condition: KeyCondition) -> String {
    match condition {
        KeyCondition::Any => "any".into(),
        KeyCondition::NoKey => "no-key".into(),
        KeyCondition::KeyExists => "exists".into(),
        KeyCondition::At(offset) => format!("offset {offset}"),
    }
}

fn append(client: &mut BlockingClient, args: AppendArgs, json: bool) -> anyhow::Result<ExitCode> {
    let condition = parse_condition(args.expect.as_deref())?;
    let mut headers = Vec::new();
    for header in &args.headers {
        let Some((name, value)) = header.split_once('=') else {
            bail!("--header {header:?}: want name=value");
        };
        headers.push(RecordHeader {
            name: name.as_bytes(),
            value: value.as_bytes(),
        });
    }
    let record = RecordInput {
        key: args.key.as_bytes(),
        value: args.value.as_bytes(),
        headers: &headers,
        condition,
        ..RecordInput::default()
    };
    let expected_end = args.expect_end_offset.map(Offset);
    match client.append(&args.topic, args.partition, expected_end, &[record])? {
        AppendResult::Appended {
            partition,
            base_offset,
            ..
        } => {
            if json {
                println!(
                    "{}",
                    json!({"partition": partition, "offset": base_offset.0})
                );
            } else {
                println!("appended at partition {partition} offset {base_offset}");
            }
            Ok(ExitCode::SUCCESS)
        }
        AppendResult::Conflict { info, message } => {
            let (expected, current) = match info {
                ConflictInfo::EndOffset { current_end_offset } => (
                    format!("end offset {}", args.expect_end_offset.unwrap_or_default()),
                    format!("partition end is {current_end_offset}"),
                ),
                ConflictInfo::Key {
                    condition,
                    current_offset,
                    ..
                } => (
                    describe_condition(condition),
                    match current_offset {
                        Some(offset) => format!("key {} is at offset {offset}", args.key),
                        None => format!("key {} has no record", args.key),
                    },
                ),
            };
            if json {
                println!(
                    "{}",
                    json!({"conflict": {"expected": expected, "current": current, "message": message}})
                );
            } else {
                eprintln!("conflict: expected {expected}, but {current}");
            }
            Ok(ExitCode::from(EXIT_CONFLICT))
        }
    }
}

/// Metadata string `cairn fetch --group` commits with its offsets.
const FETCH_COMMIT_METADATA: &str = "cairn fetch";

/// `cairn fetch --group`: reads `partition` (or every partition of `topic`) from `group`'s
/// committed offsets, committing the offset after each printed chunk. Without `follow` it
/// stops once every partition is caught up; with it, it polls the partitions in turn.
fn fetch_as_group(
    client: &mut BlockingClient,
    topic: &str,
    partition: Option<u32>,
    group: &str,
    follow: bool,
    max_bytes: u32,
    json: bool,
) -> anyhow::Result<()> {
    let partitions: Vec<u32> = match partition {
        Some(partition) => vec![partition],
        None => {
            let metadata = client.metadata()?;
            let info = metadata
                .topics
                .iter()
                .find(|info| info.name == topic)
                .with_context(|| format!("no topic named {topic:?}"))?;
            (0..info.partition_count()).collect()
        }
    };
    let several = partitions.len() > 1;
    let committed = client.fetch_offsets(group, topic, &partitions)?;
    let mut offsets: Vec<Offset> = committed
        .iter()
        .map(|entry| {
            Offset(
                entry
                    .offset
                    .and_then(|offset| u64::try_from(offset).ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    // One partition long-polls; several take turns with a short wait each, so that a
    // quiet partition does not hold up the others for long.
    let wait = match (follow, partitions.len()) {
        (false, _) => Duration::ZERO,
        (true, 1) => Duration::from_secs(10),
        (true, _) => Duration::from_millis(500),
    };
    loop {
        let mut caught_up = true;
        for (&partition, offset) in partitions.iter().zip(offsets.iter_mut()) {
            let fetched = client.fetch(topic, partition, *offset, max_bytes, wait)?;
            if fetched.records.is_empty() {
                continue;
            }
            for record in &fetched.records {
                print_record(record, several.then_some(partition), json);
                *offset = record.offset.plus(1);
            }
            std::io::stdout().flush()?;
            // Printed first, committed after: a crash in between prints the chunk again
            // (at least once), never skips it.
            let next = i64::try_from(offset.0).context("offset beyond i64")?;
            client.commit_offsets(
                group,
                topic,
                &[cairn_client::PartitionOffset {
                    partition,
                    offset: next,
                    metadata: FETCH_COMMIT_METADATA,
                }],
            )?;
            if *offset < fetched.synced_end {
                caught_up = false;
            }
        }
        if !follow && caught_up {
            return Ok(());
        }
    }
}

/// Prints one record: its offset, or `partition/offset` when `partition` is given (a read
/// of several partitions, whose offsets alone would be ambiguous).
fn print_record(record: &FetchedRecord, partition: Option<u32>, json: bool) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if json {
        let headers: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|(name, value)| (text(name), json!(text(value))))
            .collect();
        let mut object = json!({
            "offset": record.offset.0,
            "timestamp_ms": record.timestamp_ms,
            "key": text(&record.key),
            "value": text(&record.value),
            "headers": headers,
            "prev_key_offset": record.prev_key_offset.map(|offset| offset.0),
        });
        if let Some(partition) = partition {
            object["partition"] = json!(partition);
        }
        println!("{object}");
    } else {
        let headers: Vec<String> = record
            .headers
            .iter()
            .map(|(name, value)| format!("{}={}", text(name), text(value)))
            .collect();
        let previous = record
            .prev_key_offset
            .map_or("-".to_owned(), |offset| offset.to_string());
        let position = match partition {
            Some(partition) => format!("{partition}/{}", record.offset),
            None => record.offset.to_string(),
        };
        println!(
            "{}\tkey={}\tprev={}\t[{}]\t{}",
            position,
            text(&record.key),
            previous,
            headers.join(","),
            text(&record.value)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rules_fail_the_chosen_window_of_operations() {
        let hook = parse_fault_spec("prepare:after=2:count=3:errno=28, sync:after=1").unwrap();
        let path = std::path::Path::new("x");
        let prepares: Vec<Option<i32>> = (0..7)
            .map(|_| hook.0.fail(FaultPoint::Prepare, path))
            .collect();
        let enospc = Some(28);
        assert_eq!(
            prepares,
            [None, None, enospc, enospc, enospc, None, None].to_vec()
        );
        let syncs: Vec<Option<i32>> = (0..3)
            .map(|_| hook.0.fail(FaultPoint::Sync, path))
            .collect();
        assert_eq!(syncs, [None, Some(5), Some(5)].to_vec());
        assert_eq!(hook.0.fail(FaultPoint::Write, path), None);
        for bad in [
            "",
            "fsync:after=1",
            "write:after",
            "write:after=x",
            "write:when=1",
        ] {
            assert!(parse_fault_spec(bad).is_err(), "{bad:?} is refused");
        }
    }
}
