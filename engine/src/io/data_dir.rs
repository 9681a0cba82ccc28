//! The data directory's identity (`cairn.meta`), its topic catalog (`topics.meta`), each
//! shard's producer-id reservation (`core-<n>/producer-ids`) and the lock that makes it one
//! process's at a time (`lock`).
//!
//! The lock (`DataDirLock`) is an `flock` on `<data-dir>/lock`, taken before anything is
//! read or written and held by the `Engine` (and its clones) for the process's life; the
//! kernel releases it when the process dies, kill -9 included, so a crashed server never
//! blocks its restart. The holder's pid is written into the file for the error message of
//! the one refused.
//!
//! All three are tiny text files replaced atomically: write `*.tmp`, `fdatasync`, rename,
//! sync the directory (FORMAT.md, "cairn.meta and topics.meta"). They are written rarely
//! (at creation, when a topic is created, once per `PRODUCER_ID_BLOCK_COUNT` producer ids),
//! so this module uses blocking `std::fs`: a few milliseconds for an admin request or a
//! producer's InitProducerId, never on the append path.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::PartitionId;
use crate::core::retention::RetentionPolicy;
use crate::error::{OpenError, StorageError, TopicError};

/// The on-disk format version this build reads and writes (FORMAT.md, version history).
pub const DATA_DIR_FORMAT_VERSION: u32 = 1;

/// Name of a shard's producer-id reservation file, in its `core-<n>/` directory.
pub const PRODUCER_IDS_FILE_NAME: &str = "producer-ids";

/// Producer ids a shard reserves with one write of its `producer-ids` file: only one
/// allocation in this many waits for a sync.
pub const PRODUCER_ID_BLOCK_COUNT: u64 = 1024;

/// Producer id `n * PRODUCER_ID_SHARD_STRIDE + shard_id` is the `n`th of shard `shard_id`:
/// shards hand out disjoint ids without talking to each other. Shard ids are `u16`.
const PRODUCER_ID_SHARD_STRIDE: u64 = 1 << 16;

const _: () = assert!(PRODUCER_ID_SHARD_STRIDE == u16::MAX as u64 + 1);

/// Largest counter whose id fits in a non-negative `i64`.
const PRODUCER_ID_COUNTER_MAX: u64 = (i64::MAX as u64 - u16::MAX as u64) / PRODUCER_ID_SHARD_STRIDE;

/// One shard's producer-id counter and the end of the block of counters reserved on disk.
///
/// Invariant: every id handed out has a counter below the `counter_end` that
/// `producer-ids` holds durably. On open the counter resumes at that end, so ids of a block
/// only partly handed out before a crash are skipped, never handed out twice.
#[derive(Debug)]
pub struct ProducerIdAllocator {
    shard_id: u16,
    next_counter: u64,
    reserved_end: u64,
}

impl ProducerIdAllocator {
    /// Reads shard `shard_id`'s reservation from `shard_dir` (none yet: counter 0).
    pub fn load(shard_dir: &Path, shard_id: u16) -> Result<Self, OpenError> {
        let path = shard_dir.join(PRODUCER_IDS_FILE_NAME);
        let reserved_end = if path.exists() {
            let body = read_checked(&path)?;
            let bad = |problem: &str| OpenError::BadMetadata {
                path: path.clone(),
                problem: problem.to_owned(),
            };
            let value = body
                .trim_end()
                .strip_prefix("counter_end ")
                .ok_or_else(|| bad("expected `counter_end <n>`"))?;
            let reserved_end: u64 = value.parse().map_err(|_| bad("bad counter_end"))?;
            if reserved_end > PRODUCER_ID_COUNTER_MAX + 1 {
                return Err(bad("counter_end beyond the largest producer id"));
            }
            reserved_end
        } else {
            0
        };
        Ok(ProducerIdAllocator {
            shard_id,
            next_counter: reserved_end,
            reserved_end,
        })
    }

    /// The end of the block of counters reserved on disk (`counter_end`): what a backup
    /// copies, so that a server restored from it never hands out an id this one did.
    pub fn reserved_end(&self) -> u64 {
        self.reserved_end
    }

    /// Writes `counter_end` into `shard_dir` durably, as a reservation would: for a
    /// restored copy of a data directory (`io::backup`).
    pub fn save_reserved_end(shard_dir: &Path, reserved_end: u64) -> Result<(), StorageError> {
        write_atomically(
            shard_dir,
            PRODUCER_IDS_FILE_NAME,
            &format!("counter_end {reserved_end}\n"),
        )
    }

    /// The next producer id; reserves (durably) the next block first when this one is used
    /// up.
    pub fn allocate(&mut self, shard_dir: &Path) -> Result<i64, StorageError> {
        if self.next_counter > PRODUCER_ID_COUNTER_MAX {
            return Err(StorageError {
                operation: "allocate producer id",
                path: shard_dir.join(PRODUCER_IDS_FILE_NAME),
                errno: None,
                message: "every producer id of this shard has been handed out".into(),
            });
        }
        if self.next_counter == self.reserved_end {
            let reserved_end =
                (self.next_counter + PRODUCER_ID_BLOCK_COUNT).min(PRODUCER_ID_COUNTER_MAX + 1);
            // Durable before any id of the block is handed out: after a crash the next life
            // starts past the block, whatever of it this life used.
            write_atomically(
                shard_dir,
                PRODUCER_IDS_FILE_NAME,
                &format!("counter_end {reserved_end}\n"),
            )?;
            self.reserved_end = reserved_end;
        }
        let counter = self.next_counter;
        self.next_counter += 1;
        let id = counter * PRODUCER_ID_SHARD_STRIDE + u64::from(self.shard_id);
        Ok(i64::try_from(id).expect("counters stop at PRODUCER_ID_COUNTER_MAX"))
    }
}

/// Most partitions one topic may have.
pub const TOPIC_PARTITION_COUNT_MAX: u32 = 4096;

/// Longest topic name (Kafka's limit, so names carry over).
pub const TOPIC_NAME_SIZE_BYTES_MAX: usize = 249;

const META_FILE_NAME: &str = "cairn.meta";
const LOCK_FILE_NAME: &str = "lock";
const TOPICS_FILE_NAME: &str = "topics.meta";

/// One topic: its name, the contiguous range of partition ids it owns, and how much of
/// each partition's history it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    /// The topic's name.
    pub name: String,
    /// Number of partitions, fixed at creation.
    pub partition_count: u32,
    /// Id of partition 0 of this topic; partition `i` is `first_partition_id + i`.
    pub first_partition_id: u32,
    /// What each partition keeps; the only setting that changes after creation
    /// (`Catalog::set_retention`).
    pub retention: RetentionPolicy,
}

impl Topic {
    /// Whether `other` is the same topic: same name and partition ids. Settings that can
    /// change (retention) are not part of a topic's identity.
    pub fn is_same_topic(&self, other: &Topic) -> bool {
        self.name == other.name
            && self.partition_count == other.partition_count
            && self.first_partition_id == other.first_partition_id
    }

    /// The global id of this topic's partition `index`, if it exists.
    pub fn partition_id(&self, index: u32) -> Option<PartitionId> {
        (index < self.partition_count).then(|| PartitionId(self.first_partition_id + index))
    }

    /// Every partition id of the topic.
    pub fn partition_ids(&self) -> impl Iterator<Item = PartitionId> + '_ {
        (0..self.partition_count).map(|index| PartitionId(self.first_partition_id + index))
    }
}

/// Every topic of a data directory, in creation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    topics: Vec<Topic>,
}

impl Catalog {
    /// The topics, in creation order.
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.iter().find(|topic| topic.name == name)
    }

    /// Every partition id of every topic.
    pub fn partition_ids(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.topics.iter().flat_map(Topic::partition_ids)
    }

    fn next_partition_id(&self) -> u32 {
        self.topics
            .iter()
            .map(|topic| topic.first_partition_id + topic.partition_count)
            .max()
            .unwrap_or(0)
    }

    /// Adds a topic in memory (the caller persists the catalog), assigning it the next
    /// unused partition ids.
    pub fn add(&mut self, name: &str, partition_count: u32) -> Result<Topic, TopicError> {
        self.add_aligned(name, partition_count, 1)
    }

    /// Adds a topic as `add` does, with a retention policy (`validate_retention`).
    pub fn add_with(
        &mut self,
        name: &str,
        partition_count: u32,
        retention: RetentionPolicy,
    ) -> Result<Topic, TopicError> {
        validate_retention(retention)?;
        let mut topic = self.add(name, partition_count)?;
        let known = self
            .topics
            .last_mut()
            .expect("add pushed the topic it returned");
        known.retention = retention;
        topic.retention = retention;
        Ok(topic)
    }

    /// Changes topic `name`'s retention in memory (the caller persists the catalog) and
    /// returns the topic as it now is.
    pub fn set_retention(
        &mut self,
        name: &str,
        retention: RetentionPolicy,
    ) -> Result<Topic, TopicError> {
        validate_retention(retention)?;
        let topic = self
            .topics
            .iter_mut()
            .find(|topic| topic.name == name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        topic.retention = retention;
        Ok(topic.clone())
    }

    /// Adds a topic as `add` does, but with a first partition id that is a multiple of
    /// `alignment` (ids below it and above the last topic's stay unused forever). With
    /// `alignment` = the shard count, partition `i` is owned by shard `i % shard_count`
    /// (`ShardId::owner_of`): what an internal topic with one partition per shard needs.
    pub fn add_aligned(
        &mut self,
        name: &str,
        partition_count: u32,
        alignment: u32,
    ) -> Result<Topic, TopicError> {
        assert!(alignment > 0, "an alignment of 0 has no multiples");
        let next = self.next_partition_id();
        let first =
            next.checked_next_multiple_of(alignment)
                .ok_or(TopicError::BadPartitionCount {
                    partition_count,
                    partition_count_max: 0,
                })?;
        self.add_at(name, partition_count, first)
    }

    /// Adds a topic at `first_partition_id`, which must not be below any id in use (ids
    /// are never reused; gaps are allowed).
    fn add_at(
        &mut self,
        name: &str,
        partition_count: u32,
        first_partition_id: u32,
    ) -> Result<Topic, TopicError> {
        assert!(
            first_partition_id >= self.next_partition_id(),
            "partition id {first_partition_id} is in use"
        );
        validate_topic_name(name)?;
        if !(1..=TOPIC_PARTITION_COUNT_MAX).contains(&partition_count) {
            return Err(TopicError::BadPartitionCount {
                partition_count,
                partition_count_max: TOPIC_PARTITION_COUNT_MAX,
            });
        }
        if self.topic(name).is_some() {
            return Err(TopicError::Exists(name.to_owned()));
        }
        if first_partition_id.checked_add(partition_count).is_none() {
            return Err(TopicError::BadPartitionCount {
                partition_count,
                partition_count_max: u32::MAX - first_partition_id,
            });
        }
        let topic = Topic {
            name: name.to_owned(),
            partition_count,
            first_partition_id,
            retention: RetentionPolicy::FOREVER,
        };
        self.topics.push(topic.clone());
        Ok(topic)
    }

    /// Adds a topic exactly as another shard's catalog assigned it (its partition ids
    /// included), so every shard routes by the same ids whatever order announcements
    /// arrive in. Learning a known topic again takes its announced settings (retention):
    /// that is how a change reaches the other shards. One that contradicts what is known
    /// (same name, other ids, or ids another topic has) is refused.
    pub fn mirror(&mut self, topic: &Topic) -> Result<(), TopicError> {
        validate_retention(topic.retention)?;
        let topic_end = u64::from(topic.first_partition_id) + u64::from(topic.partition_count);
        for known in &mut self.topics {
            if known.name == topic.name {
                return if known.is_same_topic(topic) {
                    known.retention = topic.retention;
                    Ok(())
                } else {
                    Err(TopicError::Contradicts {
                        known: Box::new(known.clone()),
                        announced: Box::new(topic.clone()),
                    })
                };
            }
            let known_end = u64::from(known.first_partition_id) + u64::from(known.partition_count);
            if u64::from(topic.first_partition_id) < known_end
                && u64::from(known.first_partition_id) < topic_end
            {
                return Err(TopicError::Contradicts {
                    known: Box::new(known.clone()),
                    announced: Box::new(topic.clone()),
                });
            }
        }
        validate_topic_name(&topic.name)?;
        let position = self
            .topics
            .partition_point(|known| known.first_partition_id < topic.first_partition_id);
        self.topics.insert(position, topic.clone());
        Ok(())
    }

    /// The catalog as `topics.meta` holds it, without its crc line.
    pub fn to_meta_body(&self) -> String {
        self.encode()
    }

    /// A catalog from `topics.meta`'s body without its crc line (a backup manifest's copy),
    /// checked as a file would be; `origin` names it in errors.
    pub fn from_meta_body(origin: &Path, body: &str) -> Result<Catalog, OpenError> {
        Catalog::decode(origin, body)
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        for topic in &self.topics {
            text.push_str(&format!(
                "topic {} {} {}",
                topic.name, topic.partition_count, topic.first_partition_id
            ));
            // Only limits that are set: a topic that keeps forever writes the line older
            // versions wrote, so downgrading stays possible until someone sets retention.
            if let Some(ms) = topic.retention.ms {
                text.push_str(&format!(" {RETENTION_MS_FIELD}={ms}"));
            }
            if let Some(bytes) = topic.retention.bytes {
                text.push_str(&format!(" {RETENTION_BYTES_FIELD}={bytes}"));
            }
            text.push('\n');
        }
        text
    }

    fn decode(path: &Path, body: &str) -> Result<Catalog, OpenError> {
        let mut catalog = Catalog::default();
        for line in body.lines() {
            let bad = |problem: String| OpenError::BadMetadata {
                path: path.to_owned(),
                problem,
            };
            let fields: Vec<&str> = line.split(' ').collect();
            let [tag, name, count, first, settings @ ..] = fields.as_slice() else {
                return Err(bad(format!("malformed line {line:?}")));
            };
            if *tag != "topic" {
                return Err(bad(format!("unknown entry {tag:?}")));
            }
            let count: u32 = count
                .parse()
                .map_err(|_| bad(format!("bad count in {line:?}")))?;
            let first: u32 = first
                .parse()
                .map_err(|_| bad(format!("bad id in {line:?}")))?;
            // Topics come in creation order, each after the ids of those before; a gap
            // is an aligned topic's (`add_aligned`).
            if first < catalog.next_partition_id() {
                return Err(bad(format!(
                    "topic {name} starts at partition {first}, below {}, which is in use",
                    catalog.next_partition_id()
                )));
            }
            let retention = decode_retention(settings)
                .map_err(|problem| bad(format!("{problem} in {line:?}")))?;
            catalog
                .add_at(name, count, first)
                .map_err(|error| bad(error.to_string()))?;
            catalog
                .set_retention(name, retention)
                .map_err(|error| bad(error.to_string()))?;
        }
        Ok(catalog)
    }
}

/// The file that names a shard's first segment once retention removed the ones before.
pub(crate) const LOG_START_FILE_NAME: &str = "log-start";

/// The first segment of shard `shard_dir`'s core log: 0 unless retention removed earlier
/// ones (FORMAT.md, `core-<n>/log-start`).
pub(crate) fn load_log_start(shard_dir: &Path) -> Result<u64, OpenError> {
    let path = shard_dir.join(LOG_START_FILE_NAME);
    if !path.exists() {
        return Ok(0);
    }
    let body = read_checked(&path)?;
    body.trim_end()
        .strip_prefix("first_segment ")
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| OpenError::BadMetadata {
            path,
            problem: "expected `first_segment <n>`".to_owned(),
        })
}

/// Records durably that shard `shard_dir`'s log starts at segment `first_segment`: written
/// before the segments before it are removed, so a crash never leaves a hole that looks
/// like damage.
pub(crate) fn save_log_start(shard_dir: &Path, first_segment: u64) -> Result<(), StorageError> {
    write_atomically(
        shard_dir,
        LOG_START_FILE_NAME,
        &format!("first_segment {first_segment}\n"),
    )
}

/// Field names of a `topics.meta` line's optional settings (FORMAT.md, topics.meta).
const RETENTION_MS_FIELD: &str = "retention.ms";
const RETENTION_BYTES_FIELD: &str = "retention.bytes";

/// The settings after a topic line's fixed fields: each `retention.ms=<n>` or
/// `retention.bytes=<n>` at most once, `n` at least 1; an absent one is no limit.
fn decode_retention(settings: &[&str]) -> Result<RetentionPolicy, String> {
    let mut retention = RetentionPolicy::FOREVER;
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            return Err(format!("setting {setting:?} is not key=value"));
        };
        let limit = match key {
            RETENTION_MS_FIELD => &mut retention.ms,
            RETENTION_BYTES_FIELD => &mut retention.bytes,
            _ => return Err(format!("unknown setting {key:?}")),
        };
        if limit.is_some() {
            return Err(format!("setting {key:?} twice"));
        }
        let value: u64 = value
            .parse()
            .map_err(|_| format!("bad value {value:?} for {key}"))?;
        *limit = Some(value);
    }
    Ok(retention)
}

/// Refuses a retention limit of 0, which would remove each record as soon as it is
/// written: no limit is `None`.
pub fn validate_retention(retention: RetentionPolicy) -> Result<(), TopicError> {
    if retention.ms == Some(0) {
        return Err(TopicError::InvalidRetention {
            setting: RETENTION_MS_FIELD,
        });
    }
    if retention.bytes == Some(0) {
        return Err(TopicError::InvalidRetention {
            setting: RETENTION_BYTES_FIELD,
        });
    }
    Ok(())
}

fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let invalid = |problem| TopicError::InvalidName {
        name: name.to_owned(),
        problem,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > TOPIC_NAME_SIZE_BYTES_MAX {
        return Err(invalid("longer than 249 bytes"));
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
    {
        return Err(invalid("only A-Z a-z 0-9 . _ - are allowed"));
    }
    // Kafka refuses them too (they name directories there), so a Kafka user's tools and
    // mirrors never meet them.
    if name == "." || name == ".." {
        return Err(invalid("\".\" and \"..\" are not topic names"));
    }
    Ok(())
}

/// The exclusive lock on a data directory: one process (one `Engine`) at a time. Released
/// when the last clone is dropped or the process ends.
#[derive(Clone, Debug)]
pub struct DataDirLock {
    _file: Arc<File>,
}

impl DataDirLock {
    /// Creates the directory if needed (durably) and takes its lock, or says who holds it.
    pub fn acquire(path: &Path) -> Result<DataDirLock, OpenError> {
        create_dir_durably(path)?;
        Ok(DataDirLock {
            _file: Arc::new(lock(path)?),
        })
    }
}

/// An opened data directory: its path and shard count, verified against `cairn.meta`.
/// Open it under its `DataDirLock`.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    shard_count: u16,
}

impl DataDir {
    /// Opens `path`, creating it (and `cairn.meta`) when it does not exist yet. An existing
    /// directory must have been created with `shard_count` shards.
    pub fn open_or_create(path: &Path, shard_count: u16) -> Result<DataDir, OpenError> {
        if shard_count == 0 {
            return Err(OpenError::BadConfig(
                "shard count must be at least 1".into(),
            ));
        }
        create_dir_durably(path)?;
        let meta_path = path.join(META_FILE_NAME);
        if meta_path.exists() {
            let body = read_checked(&meta_path)?;
            let (version, recorded_shard_count) = decode_meta(&meta_path, &body)?;
            if version != DATA_DIR_FORMAT_VERSION {
                return Err(OpenError::UnsupportedFormat {
                    actual: version,
                    supported: DATA_DIR_FORMAT_VERSION,
                });
            }
            if recorded_shard_count != shard_count {
                return Err(OpenError::ShardCountMismatch {
                    expected: shard_count,
                    actual: recorded_shard_count,
                });
            }
        } else {
            let body =
                format!("format_version {DATA_DIR_FORMAT_VERSION}\nshard_count {shard_count}\n");
            write_atomically(path, META_FILE_NAME, &body)?;
        }
        let data_dir = DataDir {
            path: path.to_owned(),
            shard_count,
        };
        for shard in 0..shard_count {
            let shard_dir = data_dir.shard_dir(shard);
            fs::create_dir_all(&shard_dir)
                .map_err(|error| StorageError::from_io("create directory", &shard_dir, &error))?;
        }
        sync_dir(path)?;
        Ok(data_dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of shards, fixed at creation.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// Directory holding shard `shard`'s segments.
    pub fn shard_dir(&self, shard: u16) -> PathBuf {
        self.path.join(format!("core-{shard}"))
    }

    /// Reads the topic catalog (empty when no topic was ever created).
    pub fn load_catalog(&self) -> Result<Catalog, OpenError> {
        let path = self.path.join(TOPICS_FILE_NAME);
        if !path.exists() {
            return Ok(Catalog::default());
        }
        let body = read_checked(&path)?;
        Catalog::decode(&path, &body)
    }

    /// Replaces the topic catalog durably: when this returns, a crash keeps the new one.
    pub fn save_catalog(&self, catalog: &Catalog) -> Result<(), StorageError> {
        write_atomically(&self.path, TOPICS_FILE_NAME, &catalog.encode())
    }
}

/// Creates `path` and any missing ancestors, syncing each new directory's parent: without
/// that a crash can forget the data directory itself, and with it every segment synced into
/// it.
fn create_dir_durably(path: &Path) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    let mut ancestor = Some(path);
    while let Some(dir) = ancestor {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        missing.push(dir);
        ancestor = dir.parent();
    }
    fs::create_dir_all(path)
        .map_err(|error| StorageError::from_io("create directory", path, &error))?;
    for dir in missing {
        let parent = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// Takes the data directory's lock, or says who holds it.
fn lock(path: &Path) -> Result<File, OpenError> {
    let lock_path = path.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|error| StorageError::from_io("open", &lock_path, &error))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder_pid = fs::read_to_string(&lock_path)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            return Err(OpenError::DataDirInUse {
                path: path.to_owned(),
                lock_path,
                holder_pid,
            });
        }
        Err(fs::TryLockError::Error(error)) => {
            return Err(StorageError::from_io("lock", &lock_path, &error).into());
        }
    }
    // Best effort: the pid only improves the message a second process prints.
    let pid = format!("{}\n", std::process::id());
    if file
        .set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .is_err()
    {
        tracing::debug!(path = %lock_path.display(), "could not record the pid in the lock file");
    }
    Ok(file)
}

/// The shard count recorded in `path`'s `cairn.meta`, `None` if there is no data directory
/// there: for offline tools that must open a directory with the count it was created with.
pub fn recorded_shard_count(path: &Path) -> Result<Option<u16>, OpenError> {
    let meta_path = path.join(META_FILE_NAME);
    if !meta_path.exists() {
        return Ok(None);
    }
    let body = read_checked(&meta_path)?;
    Ok(Some(decode_meta(&meta_path, &body)?.1))
}

fn decode_meta(path: &Path, body: &str) -> Result<(u32, u16), OpenError> {
    let bad = |problem: String| OpenError::BadMetadata {
        path: path.to_owned(),
        problem,
    };
    let mut version = None;
    let mut shard_count = None;
    for line in body.lines() {
        match line.split_once(' ') {
            Some(("format_version", value)) => {
                version = Some(value.parse::<u32>().map_err(|_| bad(format!("{line:?}")))?);
            }
            Some(("shard_count", value)) => {
                shard_count = Some(value.parse::<u16>().map_err(|_| bad(format!("{line:?}")))?);
            }
            _ => return Err(bad(format!("unknown line {line:?}"))),
        }
    }
    match (version, shard_count) {
        (Some(version), Some(shard_count)) => Ok((version, shard_count)),
        _ => Err(bad("format_version or shard_count missing".into())),
    }
}

/// Reads a metadata file and verifies its trailing `crc32 <hex>` line; returns the body.
fn read_checked(path: &Path) -> Result<String, OpenError> {
    let bad = |problem: String| OpenError::BadMetadata {
        path: path.to_owned(),
        problem,
    };
    let text =
        fs::read_to_string(path).map_err(|error| StorageError::from_io("read", path, &error))?;
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map_or(0, |newline| newline + 1);
    let (body, crc_line) = text.split_at(body_end);
    let Some(recorded) = crc_line.trim_end().strip_prefix("crc32 ") else {
        return Err(bad("last line is not `crc32 <hex>`".into()));
    };
    let recorded = u32::from_str_radix(recorded, 16).map_err(|_| bad("bad crc32 line".into()))?;
    let actual = crc32fast::hash(body.as_bytes());
    if recorded != actual {
        return Err(bad(format!(
            "checksum {actual:08x} does not match {recorded:08x}"
        )));
    }
    Ok(body.to_owned())
}

fn write_atomically(dir: &Path, name: &str, body: &str) -> Result<(), StorageError> {
    let path = dir.join(name);
    let tmp_path = dir.join(format!("{name}.tmp"));
    let text = format!("{body}crc32 {:08x}\n", crc32fast::hash(body.as_bytes()));
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()
    };
    write().map_err(|error| StorageError::from_io("write", &tmp_path, &error))?;
    fs::rename(&tmp_path, &path).map_err(|error| StorageError::from_io("rename", &path, &error))?;
    // Without syncing the directory a crash can forget the rename, and with it the new
    // topic, although the caller was told it exists.
    sync_dir(dir)
}

/// `fsync` a directory so that names created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StorageError::from_io("sync directory", dir, &error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ShardId;

    #[test]
    fn producer_ids_resume_past_the_reserved_block_and_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let mut allocator = ProducerIdAllocator::load(dir.path(), 3).unwrap();
        let first: Vec<i64> = (0..3)
            .map(|_| allocator.allocate(dir.path()).unwrap())
            .collect();
        assert_eq!(first, vec![3, 65_536 + 3, 2 * 65_536 + 3]);
        // The process dies here, two ids into a block of 1024: the next life skips it.
        let mut allocator = ProducerIdAllocator::load(dir.path(), 3).unwrap();
        assert_eq!(allocator.allocate(dir.path()).unwrap(), 1024 * 65_536 + 3);
        for _ in 1..PRODUCER_ID_BLOCK_COUNT {
            allocator.allocate(dir.path()).unwrap();
        }
        // The block is used up: the next id reserves (and writes) the one after.
        assert_eq!(allocator.allocate(dir.path()).unwrap(), 2048 * 65_536 + 3);
        let text = fs::read_to_string(dir.path().join(PRODUCER_IDS_FILE_NAME)).unwrap();
        assert!(text.starts_with("counter_end 3072\n"), "{text}");
    }

    #[test]
    fn catalog_survives_reopen_and_assigns_dense_partition_ids() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open_or_create(dir.path(), 2).unwrap();
        let mut catalog = data_dir.load_catalog().unwrap();
        assert_eq!(catalog.add("orders", 3).unwrap().first_partition_id, 0);
        assert_eq!(catalog.add("seats", 2).unwrap().first_partition_id, 3);
        data_dir.save_catalog(&catalog).unwrap();
        drop(data_dir);

        let reopened = DataDir::open_or_create(dir.path(), 2).unwrap();
        assert_eq!(reopened.load_catalog().unwrap(), catalog);
    }

    #[test]
    fn an_aligned_topic_starts_at_a_multiple_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open_or_create(dir.path(), 4).unwrap();
        let mut catalog = data_dir.load_catalog().unwrap();
        assert_eq!(catalog.add("orders", 3).unwrap().first_partition_id, 0);
        let aligned = catalog.add_aligned("__cairn_offsets", 4, 4).unwrap();
        assert_eq!(aligned.first_partition_id, 4);
        for index in 0..4 {
            let id = aligned.partition_id(index).unwrap();
            assert_eq!(ShardId::owner_of(id, 4), ShardId(index as u16));
        }
        // Already a multiple: no gap.
        assert_eq!(
            catalog
                .add_aligned("seats", 2, 4)
                .unwrap()
                .first_partition_id,
            8
        );
        assert_eq!(catalog.add("tail", 1).unwrap().first_partition_id, 10);
        data_dir.save_catalog(&catalog).unwrap();
        drop(data_dir);

        let reopened = DataDir::open_or_create(dir.path(), 4).unwrap();
        assert_eq!(reopened.load_catalog().unwrap(), catalog);
    }

    #[test]
    fn reopening_with_another_shard_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        DataDir::open_or_create(dir.path(), 2).unwrap();
        let error = DataDir::open_or_create(dir.path(), 3).unwrap_err();
        assert!(matches!(
            error,
            OpenError::ShardCountMismatch {
                expected: 3,
                actual: 2
            }
        ));
    }

    #[test]
    fn a_corrupted_catalog_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open_or_create(dir.path(), 1).unwrap();
        let mut catalog = Catalog::default();
        catalog.add("orders", 3).unwrap();
        data_dir.save_catalog(&catalog).unwrap();
        let path = dir.path().join(TOPICS_FILE_NAME);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("orders 3", "orders 4");
        fs::write(&path, text).unwrap();
        assert!(matches!(
            data_dir.load_catalog(),
            Err(OpenError::BadMetadata { .. })
        ));
    }

    fn write_catalog_file(dir: &Path, body: &str) {
        fs::write(
            dir.join(TOPICS_FILE_NAME),
            format!("{body}crc32 {:08x}\n", crc32fast::hash(body.as_bytes())),
        )
        .unwrap();
    }

    #[test]
    fn a_catalog_without_retention_fields_loads_as_keep_forever() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open_or_create(dir.path(), 1).unwrap();
        write_catalog_file(dir.path(), "topic orders 3 0\ntopic seats 2 3\n");
        let catalog = data_dir.load_catalog().unwrap();
        assert_eq!(catalog.topics().len(), 2);
        for topic in catalog.topics() {
            assert_eq!(topic.retention, RetentionPolicy::FOREVER);
        }
        // Saved again without a change, the file is byte for byte what old versions wrote.
        assert_eq!(catalog.encode(), "topic orders 3 0\ntopic seats 2 3\n");
    }

    #[test]
    fn retention_round_trips_through_topics_meta() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open_or_create(dir.path(), 1).unwrap();
        let mut catalog = Catalog::default();
        let both = RetentionPolicy {
            ms: Some(604_800_000),
            bytes: Some(1 << 30),
        };
        catalog.add_with("orders", 3, both).unwrap();
        catalog.add("seats", 2).unwrap();
        let bytes_only = RetentionPolicy {
            ms: None,
            bytes: Some(4096),
        };
        catalog.set_retention("seats", bytes_only).unwrap();
        data_dir.save_catalog(&catalog).unwrap();
        let text = fs::read_to_string(dir.path().join(TOPICS_FILE_NAME)).unwrap();
        assert!(
            text.starts_with(
                "topic orders 3 0 retention.ms=604800000 retention.bytes=1073741824\n\
                 topic seats 2 3 retention.bytes=4096\n"
            ),
            "{text}"
        );
        let loaded = data_dir.load_catalog().unwrap();
        assert_eq!(loaded, catalog);
        assert_eq!(loaded.topic("orders").unwrap().retention, both);
        assert_eq!(loaded.topic("seats").unwrap().retention, bytes_only);
        // Back to forever: the line loses its fields.
        catalog
            .set_retention("seats", RetentionPolicy::FOREVER)
            .unwrap();
        assert!(catalog.encode().ends_with("topic seats 2 3\n"));
    }

    #[test]
    fn a_catalog_with_a_bad_retention_field_is_refused_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open_or_create(dir.path(), 1).unwrap();
        for (field, problem) in [
            ("retention.ms=-1", "bad value"),
            ("retention.ms=", "bad value"),
            ("retention.bytes=12x", "bad value"),
            ("retention.ms=0", "retention.ms must be at least 1"),
            ("retention.bytes=0", "retention.bytes must be at least 1"),
            ("retention.ms=5 retention.ms=6", "twice"),
            ("retention.days=5", "unknown setting"),
            ("retention.ms", "not key=value"),
            ("", "not key=value"),
        ] {
            write_catalog_file(dir.path(), &format!("topic orders 3 0 {field}\n"));
            match data_dir.load_catalog() {
                Err(OpenError::BadMetadata {
                    problem: actual, ..
                }) => {
                    assert!(actual.contains(problem), "{field:?}: {actual}");
                }
                other => panic!("{field:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn mirroring_compares_identity_and_takes_the_announced_retention() {
        let mut source = Catalog::default();
        let topic = source.add("orders", 3).unwrap();
        let mut mirror = Catalog::default();
        mirror.mirror(&topic).unwrap();
        let changed = source
            .set_retention(
                "orders",
                RetentionPolicy {
                    ms: Some(1000),
                    bytes: None,
                },
            )
            .unwrap();
        mirror.mirror(&changed).unwrap();
        assert_eq!(mirror, source);
        let moved = Topic {
            first_partition_id: 5,
            ..changed
        };
        assert!(matches!(
            mirror.mirror(&moved),
            Err(TopicError::Contradicts { .. })
        ));
    }

    #[test]
    fn topic_names_and_counts_are_validated() {
        let mut catalog = Catalog::default();
        assert!(matches!(
            catalog.add("", 1),
            Err(TopicError::InvalidName { .. })
        ));
        assert!(matches!(
            catalog.add("a b", 1),
            Err(TopicError::InvalidName { .. })
        ));
        for name in [".", ".."] {
            assert!(matches!(
                catalog.add(name, 1),
                Err(TopicError::InvalidName { .. })
            ));
        }
        catalog.add("...", 1).unwrap();
        assert!(matches!(
            catalog.add("ok", 0),
            Err(TopicError::BadPartitionCount { .. })
        ));
        catalog.add("ok", 1).unwrap();
        assert_eq!(catalog.add("ok", 1), Err(TopicError::Exists("ok".into())));
    }
}
