//! Segment index files against the real server: a log that rolled several small segments
//! is read through them after a restart (every offset fetched, every key's history across
//! sealed segments, ListOffsets by time), and a deleted or corrupted index file is rebuilt
//! at the next start, with the same answers. And the real engine: failed index writes
//! (ENOSPC) leave appends and reads alone and are retried.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig, FetchedRecord};
use cairn_engine::{
    FaultHook, FaultPoint, FaultPolicy, Offset, PartitionId, RecordInput, Shard, ShardId,
};

use cairn_engine::core::recovery::RecoveryScanner;
use cairn_engine::core::segment_header::SegmentHeader;
use cairn_engine::io::index_file::index_file_name;
use cairn_engine::io::recovery::rebuild_segment_index;
use cairn_engine::io::segment::SegmentFile;

use crate::kafka_protocol::list_offset;
use crate::support::engine::{open_engine, run_local, test_config};
use crate::support::kafka_connection::KafkaConnection;
use crate::support::server::TestServer;

const TOPIC: &str = "history";
const KEY_COUNT: usize = 12;
const WRITER_COUNT: usize = 4;
const BATCHES_PER_WRITER: usize = 400;
const RECORDS_PER_BATCH: usize = 6;

fn client(address: SocketAddr) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(address)).expect("client connects")
}

/// Appends from several writers at once (so batches interleave in groups), each batch of
/// one key; returns nothing: the truth is read back and compared across restarts.
fn write_history(address: SocketAddr) {
    let writers: Vec<_> = (0..WRITER_COUNT)
        .map(|writer| {
            std::thread::spawn(move || {
                let mut client = client(address);
                let value = vec![b'v'; 1000];
                for batch in 0..BATCHES_PER_WRITER {
                    let key = format!("key-{}", (writer * 7 + batch) % KEY_COUNT).into_bytes();
                    let records: Vec<RecordInput<'_>> = (0..RECORDS_PER_BATCH)
                        .map(|_| RecordInput {
                            key: &key,
                            value: &value,
                            ..RecordInput::default()
                        })
                        .collect();
                    let result = client.append(TOPIC, Some(0), None, &records).unwrap();
                    assert!(
                        matches!(result, AppendResult::Appended { .. }),
                        "{result:?}"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
}

/// Every record of partition 0, fetched from each offset in turn with small fetches.
fn fetch_all(client: &mut BlockingClient, end: Offset) -> Vec<FetchedRecord> {
    let mut records = Vec::new();
    let mut next = Offset(0);
    while next < end {
        let fetched = client
            .fetch(TOPIC, 0, next, 64 * 1024, Duration::ZERO)
            .unwrap_or_else(|error| panic!("fetch from {next:?}: {error}"));
        assert!(
            !fetched.records.is_empty(),
            "a fetch from {next:?} made progress"
        );
        for record in fetched.records {
            assert_eq!(record.offset, next, "records come densely in offset order");
            next = next.plus(1);
            records.push(record);
        }
    }
    records
}

fn key_history(client: &mut BlockingClient, key: &[u8]) -> Vec<Offset> {
    let mut offsets = Vec::new();
    let mut from = None;
    loop {
        let page = client
            .key_history_from(TOPIC, Some(0), key, from, 200)
            .expect("key history");
        offsets.extend(page.records.iter().map(|record| record.offset));
        match page.next_offset {
            Some(next) => from = Some(next),
            None => return offsets,
        }
    }
}

/// What a server on `data_dir` answers: every record, each key's history, and ListOffsets
/// for a spread of timestamps.
#[derive(Debug, PartialEq, Eq)]
struct Answers {
    records: Vec<(Offset, u64, Vec<u8>)>,
    histories: BTreeMap<Vec<u8>, Vec<Offset>>,
    timestamps: Vec<(i64, i64)>,
}

fn answers(server: &TestServer, record_count: u64) -> Answers {
    let mut client = client(server.address);
    let fetched = fetch_all(&mut client, Offset(record_count));
    let mut histories = BTreeMap::new();
    for key in 0..KEY_COUNT {
        let key = format!("key-{key}").into_bytes();
        let history = key_history(&mut client, &key);
        let expected: Vec<Offset> = fetched
            .iter()
            .rev()
            .filter(|record| record.key == key)
            .map(|record| record.offset)
            .collect();
        assert_eq!(
            history,
            expected,
            "history of {:?}",
            String::from_utf8_lossy(&key)
        );
        histories.insert(key, history);
    }
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    let first_ms = fetched.first().map_or(0, |record| record.timestamp_ms);
    let last_ms = fetched.last().map_or(0, |record| record.timestamp_ms);
    let step_ms = ((last_ms - first_ms) / 40).max(1);
    let mut timestamps = Vec::new();
    let mut timestamp_ms = first_ms.saturating_sub(1);
    while timestamp_ms <= last_ms + 1 {
        let (error_code, offset) = list_offset(
            &mut connection,
            TOPIC,
            0,
            i64::try_from(timestamp_ms).unwrap(),
        );
        assert_eq!(error_code, 0, "ListOffsets at {timestamp_ms}");
        // Appends get server time, which only grows here: the first record at or after it.
        let expected = fetched
            .iter()
            .find(|record| record.timestamp_ms >= timestamp_ms)
            .map_or(-1, |record| i64::try_from(record.offset.0).unwrap());
        assert_eq!(offset, expected, "ListOffsets at {timestamp_ms}");
        timestamps.push((i64::try_from(timestamp_ms).unwrap(), offset));
        timestamp_ms += step_ms;
    }
    Answers {
        records: fetched
            .into_iter()
            .map(|record| (record.offset, record.timestamp_ms, record.value))
            .collect(),
        histories,
        timestamps,
    }
}

/// Shard 0's index files (partition 0 lives there), by name.
fn index_files(data_dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(data_dir.join("core-0"))
        .expect("shard directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".seg.index"))
        .map(|path| {
            let bytes = std::fs::read(&path).expect("index file");
            (path, bytes)
        })
        .collect()
}

#[test]
fn sealed_segments_are_read_through_their_index_files_and_rebuilt_when_damaged() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let record_count = (WRITER_COUNT * BATCHES_PER_WRITER * RECORDS_PER_BATCH) as u64;
    let before_restart = {
        let mut server = TestServer::start_on(&data_dir, &[]);
        client(server.address).create_topic(TOPIC, 1).unwrap();
        write_history(server.address);
        let answers = answers(&server, record_count);
        let status = server.stop_with(15, Duration::from_secs(20));
        assert!(status.success(), "{status:?}");
        answers
    };
    let written = index_files(&data_dir);
    // 14 MB of batches in 2 MiB segments: at least five sealed, each indexed when sealed.
    assert!(written.len() >= 5, "index files: {:?}", written.keys());

    let server = TestServer::start_on(&data_dir, &[]);
    assert_eq!(
        answers(&server, record_count),
        before_restart,
        "after a restart"
    );
    drop(server);
    assert_eq!(
        index_files(&data_dir),
        written,
        "a valid index file is kept as it is"
    );

    // Delete one, flip a bit in another, cut a third short: each is rebuilt at the next start.
    let paths: Vec<&PathBuf> = written.keys().collect();
    std::fs::remove_file(paths[0]).unwrap();
    let mut flipped = written[paths[1]].clone();
    flipped[200] ^= 0x10;
    std::fs::write(paths[1], flipped).unwrap();
    std::fs::write(paths[2], &written[paths[2]][..100]).unwrap();
    let server = TestServer::start_on(&data_dir, &[]);
    assert_eq!(
        index_files(&data_dir),
        written,
        "damaged index files are rebuilt at open, byte for byte"
    );
    assert_eq!(
        answers(&server, record_count),
        before_restart,
        "after rebuilding"
    );
}

/// Fails the first `failure_count` index writes with ENOSPC; every other operation works.
struct IndexWritesFail {
    failure_count: u64,
    seen: AtomicU64,
}

impl FaultPolicy for IndexWritesFail {
    fn fail(&self, point: FaultPoint, _path: &Path) -> Option<i32> {
        if point != FaultPoint::IndexWrite {
            return None;
        }
        let seen = self.seen.fetch_add(1, Ordering::SeqCst);
        (seen < self.failure_count).then_some(28)
    }
}

/// Appends `batch_count` batches of four 2 KiB records to `partition`, then reads every
/// offset back; returns the end offset.
async fn append_and_read_back(shard: &Shard, partition: PartitionId, batch_count: u64) -> Offset {
    let value = vec![b'i'; 2000];
    for batch in 0..batch_count {
        let key = format!("key-{}", batch % 5).into_bytes();
        let records: Vec<RecordInput<'_>> = (0..4)
            .map(|_| RecordInput {
                key: &key,
                value: &value,
                ..RecordInput::default()
            })
            .collect();
        shard
            .append(partition, None, &records)
            .await
            .expect("appends go on whatever happens to index files");
    }
    check_every_offset(shard, partition).await
}

async fn check_every_offset(shard: &Shard, partition: PartitionId) -> Offset {
    let (_, end) = shard.end_offsets(partition).unwrap();
    let mut next = Offset(0);
    while next < end {
        let fetched = shard.fetch(partition, next, 16 * 1024).await.unwrap();
        let offsets: Vec<Offset> = fetched.records().map(|record| record.offset).collect();
        assert!(!offsets.is_empty(), "a fetch from {next:?} made progress");
        for offset in offsets {
            assert_eq!(offset, next);
            next = next.plus(1);
        }
    }
    end
}

fn sealed_index_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("core-0"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg.index")
        })
        .count()
}

#[test]
fn failed_index_writes_do_not_stop_appends_and_are_retried_at_the_next_seal_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Every index write fails: appends, reads and memory go on as without index files.
    config.fault_hook = Some(FaultHook(Arc::new(IndexWritesFail {
        failure_count: u64::MAX,
        seen: AtomicU64::new(0),
    })));
    let engine = open_engine(config.clone());
    let (end, pending, dense_bytes) = run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let partition = shard
            .create_topic("events", 1)
            .unwrap()
            .partition_id(0)
            .unwrap();
        // 12 MB: five segments of 2 MiB roll.
        let end = append_and_read_back(&shard, partition, 1500).await;
        assert!(
            shard.poisoned().is_none(),
            "a failed index write poisons nothing"
        );
        let pending = shard.index_pending_count();
        let dense_bytes = shard.offset_index_memory_bytes();
        shard.close().await;
        (end, pending, dense_bytes)
    });
    assert!(
        pending >= 4,
        "{pending} sealed segments wait for their index file"
    );
    assert_eq!(sealed_index_count(dir.path()), 0);

    // The first two writes at the next open fail, then the next seal retries them in order.
    config.fault_hook = Some(FaultHook(Arc::new(IndexWritesFail {
        failure_count: 2,
        seen: AtomicU64::new(0),
    })));
    let engine = open_engine(config.clone());
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let partition = PartitionId(0);
        assert_eq!(check_every_offset(&shard, partition).await, end);
        append_and_read_back(&shard, partition, 400).await;
        // The background writes finish soon after the seal that started them.
        for _ in 0..500 {
            if shard.index_pending_count() == 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            shard.index_pending_count(),
            0,
            "every sealed segment is indexed"
        );
        assert!(
            shard.offset_index_memory_bytes() * 4 < dense_bytes,
            "sealed batches left memory: {} bytes, {dense_bytes} before",
            shard.offset_index_memory_bytes()
        );
        check_every_offset(&shard, partition).await;
        shard.close().await;
    });
    assert!(sealed_index_count(dir.path()) >= 5);
}

#[test]
fn a_segment_index_rebuilt_from_the_segment_alone_is_the_file_the_log_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let events = shard.create_topic("events", 3).unwrap();
        let other = shard.create_topic("other", 2).unwrap();
        let value = vec![b'r'; 1500];
        for batch in 0..2500u32 {
            let topic = if batch % 3 == 0 { &other } else { &events };
            let partition = topic.partition_id(batch % topic.partition_count).unwrap();
            let record = RecordInput {
                key: b"k",
                value: &value,
                ..RecordInput::default()
            };
            shard.append(partition, None, &[record]).await.unwrap();
        }
        for _ in 0..500 {
            if shard.index_pending_count() == 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        shard.close().await;
    });
    assert!(sealed_index_count(dir.path()) >= 1);
    let shard_dir = dir.path().join("core-0");
    run_local(move || async move {
        // Segment 0 starts the log: a fresh scanner continues it there.
        let path = shard_dir.join(cairn_engine::io::segment::segment_file_name(0));
        let expected = SegmentHeader {
            shard_id: ShardId(0),
            shard_count: 1,
            segment_index: 0,
            segment_size_bytes: 0,
            generation: 0,
        };
        let segment = SegmentFile::open_existing(&path, &expected)
            .await
            .unwrap()
            .expect("segment 0 has a header");
        let mut scanner = RecoveryScanner::new();
        let rebuilt = rebuild_segment_index(&segment, &mut scanner).await.unwrap();
        assert!(
            rebuilt.partitions.len() >= 4,
            "batches of several partitions"
        );
        let on_disk = std::fs::read(shard_dir.join(index_file_name(0))).unwrap();
        let encoded = rebuilt.encode();
        assert_eq!(&on_disk[..encoded.len()], encoded.as_slice());
        assert!(on_disk[encoded.len()..].iter().all(|byte| *byte == 0));
    });
}
