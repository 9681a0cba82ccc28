//! What the Kafka front end needs of the engine, on a real disk: record timestamps and
//! nulls survive a restart, and the earliest offset at or after a time is found whatever
//! order producers' timestamps come in.

use cairn_engine::{AppendOutcome, KeyCondition, Offset, PartitionId, RecordInput, ShardId};

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
