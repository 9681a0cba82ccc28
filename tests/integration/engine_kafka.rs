//! What the Kafka front end needs of the engine, on a real disk: record timestamps and
//! nulls survive a restart, the earliest offset at or after a time is found whatever order
//! producers' timestamps come in, idempotent producers' retries are answered with the
//! original offsets (before and after a restart), and producer ids are never handed out
//! twice, across shards and crashes.

use cairn_engine::{
    AppendError, AppendOutcome, KeyCondition, Offset, PartitionId, ProducerError, ProducerStamp,
    RecordInput, ShardId,
};

use crate::support::engine::{open_engine, run_local, test_config};

fn timestamped(key: &'static [u8], timestamp_ms: i64) -> RecordInput<'static> {
    RecordInput {
        key,
        value: b"v",
        timestamp_ms: Some(timestamp_ms),
        ..RecordInput::default()
    }
}

#[test]
fn engine_offset_for_timestamp_finds_the_earliest_record_at_or_after_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    let partition = PartitionId(0);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        shard.create_topic("events", 1).unwrap();
        // Offsets 0..6 with timestamps 100, 300, 200 | 150, 500 | 400: not monotonic, within
        // and across batches.
        let batches: [&[RecordInput<'_>]; 3] = [
            &[
                timestamped(b"a", 100),
                timestamped(b"b", 300),
                timestamped(b"c", 200),
            ],
            &[
                timestamped(b"a", 150),
                RecordInput {
                    null_key: true,
                    null_value: true,
                    timestamp_ms: Some(500),
                    ..RecordInput::default()
                },
            ],
            &[timestamped(b"d", 400)],
        ];
        for records in batches {
            let outcome = shard.append(partition, None, records).await.unwrap();
            assert!(matches!(outcome, AppendOutcome::Appended { .. }));
        }
        let expectations = [
            (i64::MIN, Some((Offset(0), 100))),
            (100, Some((Offset(0), 100))),
            (101, Some((Offset(1), 300))),
            (250, Some((Offset(1), 300))),
            (300, Some((Offset(1), 300))),
            (301, Some((Offset(4), 500))),
            (450, Some((Offset(4), 500))),
            (500, Some((Offset(4), 500))),
            (501, None),
        ];
        for (timestamp_ms, expected) in expectations {
            assert_eq!(
                shard
                    .offset_for_timestamp(partition, timestamp_ms)
                    .await
                    .unwrap(),
                expected,
                "timestamp {timestamp_ms}"
            );
        }
        // A record without a producer timestamp gets the server's time at append.
        let before_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let untimed = [RecordInput {
            key: b"e",
            condition: KeyCondition::NoKey,
            ..RecordInput::default()
        }];
        shard.append(partition, None, &untimed).await.unwrap();
        let (offset, timestamp_ms) = shard
            .offset_for_timestamp(partition, 501)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(offset, Offset(6));
        assert!(timestamp_ms >= before_ms, "{timestamp_ms} vs {before_ms}");
        shard.close().await;
    });

    // After a restart the index is rebuilt from the log: the same answers, the same
    // records, nulls included.
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        assert_eq!(
            shard.offset_for_timestamp(partition, 250).await.unwrap(),
            Some((Offset(1), 300))
        );
        assert_eq!(
            shard.offset_for_timestamp(partition, 450).await.unwrap(),
            Some((Offset(4), 500))
        );
        let fetched = shard.fetch(partition, Offset(0), 1 << 20).await.unwrap();
        let records: Vec<_> = fetched
            .records()
            .map(|record| {
                (
                    record.timestamp_ms(),
                    record.is_null_key(),
                    record.is_null_value(),
                )
            })
            .take(6)
            .collect();
        assert_eq!(
            records,
            vec![
                (100, false, false),
                (300, false, false),
                (200, false, false),
                (150, false, false),
                (500, true, true),
                (400, false, false),
            ]
        );
        assert_eq!(
            shard
                .read_key(partition, b"", false)
                .await
                .unwrap()
                .map(|record| record.offset),
            None,
            "a null key is not the empty key"
        );
        shard.close().await;
    });
}

fn stamp(producer_id: i64, epoch: i16, base_sequence: i32) -> Option<ProducerStamp> {
    Some(ProducerStamp {
        producer_id,
        epoch,
        base_sequence,
    })
}

fn keyed(key: &'static [u8], condition: KeyCondition) -> RecordInput<'static> {
    RecordInput {
        key,
        value: b"value",
        condition,
        ..RecordInput::default()
    }
}

#[test]
fn engine_idempotent_producer_retries_are_answered_with_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    let partition = PartitionId(0);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        shard.create_topic("events", 1).unwrap();
        let producer_id = shard.allocate_producer_id().await.unwrap();
        let batch = [
            keyed(b"k", KeyCondition::NoKey),
            keyed(b"j", KeyCondition::NoKey),
        ];
        // The original and its retry race: the retry finds the original pending and answers
        // once it is synced, with its offsets.
        let (original, retry) = futures_lite::future::zip(
            shard.append_as(partition, Some(Offset(0)), &batch, stamp(producer_id, 0, 0)),
            shard.append_as(partition, Some(Offset(0)), &batch, stamp(producer_id, 0, 0)),
        )
        .await;
        assert_eq!(
            original.unwrap(),
            AppendOutcome::Appended {
                base_offset: Offset(0),
                record_count: 2
            }
        );
        let duplicate = AppendOutcome::Duplicate {
            base_offset: Offset(0),
            record_count: 2,
        };
        assert_eq!(retry.unwrap(), duplicate);
        assert_eq!(
            shard.end_offsets(partition).unwrap(),
            (Offset(2), Offset(2))
        );
        // Synced: answered at once, still not a conflict with itself.
        assert_eq!(
            shard
                .append_as(partition, Some(Offset(0)), &batch, stamp(producer_id, 0, 0))
                .await
                .unwrap(),
            duplicate
        );
        assert_eq!(
            shard
                .append_as(
                    partition,
                    None,
                    &[keyed(b"x", KeyCondition::Any)],
                    stamp(producer_id, 0, 5)
                )
                .await,
            Err(AppendError::Producer(ProducerError::OutOfOrder {
                producer_id,
                base_sequence: 5,
                expected_sequence: 2
            }))
        );
        assert_eq!(
            shard
                .append_as(
                    partition,
                    None,
                    &[keyed(b"x", KeyCondition::Any)],
                    stamp(producer_id, 0, 2)
                )
                .await
                .unwrap(),
            AppendOutcome::Appended {
                base_offset: Offset(2),
                record_count: 1
            }
        );
        // A stamp with a negative field never reaches the log.
        assert!(matches!(
            shard
                .append_as(
                    partition,
                    None,
                    &[keyed(b"x", KeyCondition::Any)],
                    stamp(-1, 0, 0)
                )
                .await,
            Err(AppendError::InvalidBatch(_))
        ));
        // A null key with a condition is refused before anything is staged.
        let null_key = [RecordInput {
            null_key: true,
            condition: KeyCondition::NoKey,
            ..RecordInput::default()
        }];
        let refused = shard.append(partition, None, &null_key).await.unwrap_err();
        assert!(refused.to_string().contains("record 0"), "{refused}");
        // No close: the producer state must come back from the log alone.
        drop(shard);
        producer_id
    });

    let engine = open_engine(config);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let producer_id = 0;
        assert_eq!(
            shard
                .append_as(
                    partition,
                    Some(Offset(0)),
                    &[
                        keyed(b"k", KeyCondition::NoKey),
                        keyed(b"j", KeyCondition::NoKey)
                    ],
                    stamp(producer_id, 0, 0)
                )
                .await
                .unwrap(),
            AppendOutcome::Duplicate {
                base_offset: Offset(0),
                record_count: 2
            }
        );
        // A new epoch takes over at sequence 0 and fences the old one.
        assert!(matches!(
            shard
                .append_as(
                    partition,
                    None,
                    &[keyed(b"y", KeyCondition::Any)],
                    stamp(producer_id, 1, 0)
                )
                .await
                .unwrap(),
            AppendOutcome::Appended {
                base_offset: Offset(3),
                ..
            }
        ));
        assert_eq!(
            shard
                .append_as(
                    partition,
                    None,
                    &[keyed(b"y", KeyCondition::Any)],
                    stamp(producer_id, 0, 3)
                )
                .await,
            Err(AppendError::Producer(ProducerError::Fenced {
                producer_id,
                epoch: 0,
                current_epoch: 1
            }))
        );
        shard.close().await;
    });
}

#[test]
fn engine_producer_ids_are_unique_across_shards_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.shard_count = 2;
    let mut seen = std::collections::BTreeSet::new();
    for life in 0..3 {
        let engine = open_engine(config.clone());
        let ids = run_local(move || async move {
            let mut ids = Vec::new();
            for shard_id in [ShardId(0), ShardId(1)] {
                let shard = engine.open_shard(shard_id).await.unwrap();
                // A few ids only: the process "dies" mid-block (no close, nothing written
                // after the block's reservation).
                for _ in 0..(3 + life) {
                    ids.push(shard.allocate_producer_id().await.unwrap());
                }
                drop(shard);
            }
            ids
        });
        for id in ids {
            assert!(id >= 0, "{id}");
            assert!(seen.insert(id), "id {id} handed out twice (life {life})");
        }
    }
    // Life 0 used block 0 of each shard, the next lives start at the next block.
    assert!(seen.contains(&0) && seen.contains(&1));
    assert!(seen.contains(&(1024 * 65_536)));
    assert!(seen.contains(&(2048 * 65_536 + 1)));
}

#[test]
fn engine_a_corrupt_producer_id_file_is_refused_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        shard.allocate_producer_id().await.unwrap();
        shard.close().await;
    });
    let path = dir.path().join("core-0").join("producer-ids");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("counter_end 1024\n"), "{text}");
    std::fs::write(&path, text.replace("1024", "9999")).unwrap();
    let engine = open_engine(config);
    let error = run_local(move || async move {
        engine
            .open_shard(ShardId(0))
            .await
            .err()
            .map(|error| error.to_string())
    });
    let error = error.expect("a corrupted reservation is refused");
    assert!(error.contains("producer-ids"), "{error}");
}

/// A format version 1 batch of one record, as builds before version 2 wrote it
/// (FORMAT.md, "Version 1"): the first batch of its core log.
fn version_1_batch(key: &[u8], value: &[u8], timestamp_ms: u64) -> Vec<u8> {
    let record_len_bytes = 22 + key.len() + value.len();
    let len_bytes = 48 + record_len_bytes;
    let mut batch = Vec::with_capacity(len_bytes);
    batch.extend_from_slice(&0x4E52_4143_u32.to_le_bytes());
    batch.extend_from_slice(&0_u32.to_le_bytes()); // batch_crc, below
    batch.extend_from_slice(&1_u16.to_le_bytes());
    batch.extend_from_slice(&0_u16.to_le_bytes());
    batch.extend_from_slice(&(len_bytes as u32).to_le_bytes());
    batch.extend_from_slice(&0_u32.to_le_bytes()); // prev_batch_crc: the first batch
    batch.extend_from_slice(&0_u32.to_le_bytes()); // partition 0
    batch.extend_from_slice(&0_u64.to_le_bytes()); // base_offset
    batch.extend_from_slice(&1_u32.to_le_bytes()); // record_count
    batch.extend_from_slice(&0_u32.to_le_bytes()); // reserved
    batch.extend_from_slice(&timestamp_ms.to_le_bytes());
    batch.extend_from_slice(&(record_len_bytes as u32).to_le_bytes());
    batch.extend_from_slice(&u64::MAX.to_le_bytes()); // prev_key_offset: none
    batch.extend_from_slice(&(key.len() as u32).to_le_bytes());
    batch.extend_from_slice(&(value.len() as u32).to_le_bytes());
    batch.extend_from_slice(&0_u16.to_le_bytes());
    batch.extend_from_slice(key);
    batch.extend_from_slice(value);
    let crc = crc32fast::hash(&batch[8..]);
    batch[4..8].copy_from_slice(&crc.to_le_bytes());
    batch
}

#[test]
fn engine_a_segment_written_in_format_version_1_opens_and_continues_in_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        shard.create_topic("old", 1).unwrap();
        shard.close().await;
    });
    // The segment holds its header and nothing else: put a v1 batch where the first group
    // goes, as an old build would have, padded to its block.
    let segment_path = dir.path().join("core-0").join(format!("{:020}.seg", 0));
    let mut segment = std::fs::read(&segment_path).unwrap();
    let batch = version_1_batch(b"k", b"written by v1", 1_700_000_000_000);
    segment[4096..4096 + batch.len()].copy_from_slice(&batch);
    std::fs::write(&segment_path, &segment).unwrap();

    let engine = open_engine(config.clone());
    let partition = PartitionId(0);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        assert_eq!(
            shard.end_offsets(partition).unwrap(),
            (Offset(1), Offset(1))
        );
        let old = shard
            .read_key(partition, b"k", false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old.value, b"written by v1");
        assert_eq!(old.timestamp_ms, 1_700_000_000_000);
        let outcome = shard
            .append(partition, None, &[keyed(b"k", KeyCondition::At(Offset(0)))])
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            AppendOutcome::Appended {
                base_offset: Offset(1),
                ..
            }
        ));
        assert_eq!(
            shard
                .offset_for_timestamp(partition, 1_700_000_000_000)
                .await
                .unwrap(),
            Some((Offset(0), 1_700_000_000_000))
        );
        shard.close().await;
    });
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let fetched = shard.fetch(partition, Offset(0), 1 << 20).await.unwrap();
        let versions: Vec<u16> = fetched
            .batches
            .iter()
            .map(|batch| batch.view().format_version())
            .collect();
        assert_eq!(versions, vec![1, 2]);
        let history = shard
            .key_history(partition, b"k", None, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            history
                .iter()
                .map(|record| record.offset)
                .collect::<Vec<_>>(),
            vec![Offset(1), Offset(0)]
        );
        shard.close().await;
    });
}
