//! Admission to the write path under back-pressure, on the real engine: appends that wait
//! for room are woken when room appears (whatever made it), in the order they arrived, and
//! an append whose conditions already fail is answered at once instead of waiting.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_engine::core::condition::Conflict;
use cairn_engine::{
    AppendError, AppendOutcome, FaultHook, FaultPoint, FaultPolicy, KeyCondition, Offset,
    PartitionId, RecordInput, Shard, ShardId,
};

use crate::support::engine::{open_engine, run_local, test_config};

/// Long enough for any append on an idle test shard; an append still waiting after it has
/// lost its wake-up.
const APPEND_PATIENCE: Duration = Duration::from_secs(10);

fn create_topic(shard: &Shard) -> PartitionId {
    let topic = shard.create_topic("admission", 1).unwrap();
    topic.partition_id(0).unwrap()
}

fn record<'a>(key: &'a [u8], value: &'a [u8], condition: KeyCondition) -> RecordInput<'a> {
    RecordInput {
        key,
        value,
        headers: &[],
        condition,
        ..RecordInput::default()
    }
}

/// The append's outcome, or `None` if it is still waiting after `APPEND_PATIENCE`.
async fn append_within(
    shard: &Shard,
    partition: PartitionId,
    expected_end: Option<Offset>,
    records: &[RecordInput<'_>],
) -> Option<Result<AppendOutcome, AppendError>> {
    futures_lite::future::or(
        async { Some(shard.append(partition, expected_end, records).await) },
        async {
            glommio::timer::sleep(APPEND_PATIENCE).await;
            None
        },
    )
    .await
}

#[test]
fn an_append_waiting_for_a_pending_slot_is_woken_when_a_group_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.pending_append_count_max = 1;
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        // Several rounds: the first round's waiter may be rescued by an unrelated wake-up
        // (the next segment's preparation finishing), later ones have nothing else.
        for round in 0..5u8 {
            let tasks: Vec<_> = (0..2u8)
                .map(|index| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let value = [round, index];
                        append_within(
                            &shard,
                            partition,
                            None,
                            &[record(b"k", &value, KeyCondition::Any)],
                        )
                        .await
                    })
                })
                .collect();
            for (index, task) in tasks.into_iter().enumerate() {
                let outcome = task.await;
                assert!(
                    matches!(outcome, Some(Ok(AppendOutcome::Appended { .. }))),
                    "round {round}, append {index} of 2 with one pending slot: {outcome:?}"
                );
            }
        }
        Rc::try_unwrap(shard).ok().unwrap().close().await;
    });
}

/// Every segment preparation but the first (segment 0, at open) fails with ENOSPC while
/// `failing` is set.
struct DiskFull {
    failing: AtomicBool,
}

impl FaultPolicy for DiskFull {
    fn fail(&self, point: FaultPoint, path: &std::path::Path) -> Option<i32> {
        let first_segment = path.ends_with("00000000000000000000.seg");
        (point == FaultPoint::Prepare && !first_segment && self.failing.load(Ordering::SeqCst))
            .then_some(28)
    }
}

#[test]
fn an_append_that_needs_a_segment_the_full_disk_cannot_give_fails_and_later_ones_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let policy = Arc::new(DiskFull {
        failing: AtomicBool::new(true),
    });
    config.fault_hook = Some(FaultHook(policy.clone()));
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        // A 2 MiB segment holds two of these batches, not three.
        let value = Rc::new(vec![b'v'; 900 * 1024]);
        let first = append_within(
            &shard,
            partition,
            None,
            &[record(b"a", &value, KeyCondition::Any)],
        )
        .await;
        assert!(
            matches!(first, Some(Ok(AppendOutcome::Appended { .. }))),
            "{first:?}"
        );
        // Two at once: the first fits after the one above, the second needs the next
        // segment, and learns it cannot have it only once the first's group is synced.
        let tasks: Vec<_> = [b"b", b"c"]
            .into_iter()
            .map(|key| {
                let shard = shard.clone();
                let value = value.clone();
                glommio::spawn_local(async move {
                    append_within(
                        &shard,
                        partition,
                        None,
                        &[record(key, &value, KeyCondition::Any)],
                    )
                    .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await);
        }
        assert!(
            matches!(outcomes[0], Some(Ok(AppendOutcome::Appended { .. }))),
            "the batch that fits is appended: {:?}",
            outcomes[0]
        );
        match &outcomes[1] {
            Some(Err(AppendError::Storage(error))) => {
                assert_eq!(error.errno, Some(28), "the error says why: {error}");
            }
            other => panic!("the batch with no place on disk fails with ENOSPC: {other:?}"),
        }
        assert!(shard.poisoned().is_none(), "a full disk does not poison");
        // Space is back: appends resume by themselves.
        policy.failing.store(false, Ordering::SeqCst);
        let resumed = append_within(
            &shard,
            partition,
            Some(Offset(2)),
            &[record(b"d", &value, KeyCondition::Any)],
        )
        .await;
        assert!(
            matches!(
                resumed,
                Some(Ok(AppendOutcome::Appended {
                    base_offset: Offset(2),
                    ..
                }))
            ),
            "{resumed:?}"
        );
        Rc::try_unwrap(shard).ok().unwrap().close().await;
    });
}

#[test]
fn appends_waiting_for_room_are_admitted_in_the_order_they_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.pending_append_count_max = 3;
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        // Three of these fill a 1 MiB group, so most of them wait, for the group and for
        // pending slots, while earlier ones are written.
        let value = Rc::new(vec![b'v'; 300 * 1024]);
        let submitted = 40u64;
        let tasks: Vec<_> = (0..submitted)
            .map(|index| {
                let shard = shard.clone();
                let value = value.clone();
                glommio::spawn_local(async move {
                    let key = index.to_be_bytes();
                    let outcome = append_within(
                        &shard,
                        partition,
                        None,
                        &[record(&key, &value, KeyCondition::Any)],
                    )
                    .await;
                    match outcome {
                        Some(Ok(AppendOutcome::Appended { base_offset, .. })) => base_offset,
                        other => panic!("append {index}: {other:?}"),
                    }
                })
            })
            .collect();
        let mut offsets = Vec::new();
        for task in tasks {
            offsets.push(task.await);
        }
        let expected: Vec<Offset> = (0..submitted).map(Offset).collect();
        assert_eq!(
            offsets, expected,
            "appends submitted in order get offsets in that order"
        );
        Rc::try_unwrap(shard).ok().unwrap().close().await;
    });
}

#[test]
fn a_doomed_conditional_append_is_answered_without_waiting_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.pending_append_count_max = 1;
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        let first_done = Rc::new(Cell::new(false));
        let first = {
            let shard = shard.clone();
            let first_done = first_done.clone();
            glommio::spawn_local(async move {
                let outcome = shard
                    .append(
                        partition,
                        None,
                        &[record(b"k", b"first", KeyCondition::Any)],
                    )
                    .await;
                first_done.set(true);
                outcome
            })
        };
        // Let the first append take the only pending slot.
        glommio::executor().yield_task_queue_now().await;
        let answered_while_first_pending = Rc::new(RefCell::new(None));
        let doomed = append_within(
            &shard,
            partition,
            Some(Offset(7)),
            &[record(b"k", b"doomed", KeyCondition::Any)],
        )
        .await;
        *answered_while_first_pending.borrow_mut() = Some(!first_done.get());
        assert!(
            matches!(
                doomed,
                Some(Ok(AppendOutcome::ConditionFailed(Conflict::EndOffset {
                    expected: Offset(7),
                    actual: Offset(1),
                })))
            ),
            "{doomed:?}"
        );
        assert_eq!(
            *answered_while_first_pending.borrow(),
            Some(true),
            "the conflict was answered while the only pending slot was still taken"
        );
        assert!(matches!(
            first.await,
            Ok(AppendOutcome::Appended {
                base_offset: Offset(0),
                ..
            })
        ));
        Rc::try_unwrap(shard).ok().unwrap().close().await;
    });
}

#[test]
fn a_conflict_with_an_earlier_record_of_the_same_batch_reports_offsets_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(test_config(dir.path()));
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let partition = create_topic(&shard);
        for value in [b"0", b"1"] {
            shard
                .append(
                    partition,
                    None,
                    &[record(b"other", value, KeyCondition::Any)],
                )
                .await
                .unwrap();
        }
        // A new key written twice by one batch, each record asking for a new key.
        let doomed = shard
            .append(
                partition,
                None,
                &[
                    record(b"k", b"a", KeyCondition::NoKey),
                    record(b"k", b"b", KeyCondition::NoKey),
                ],
            )
            .await;
        match doomed {
            Ok(AppendOutcome::ConditionFailed(Conflict::Key {
                record_index: 1,
                condition: KeyCondition::NoKey,
                actual,
                earlier_in_batch,
            })) => {
                assert_eq!(actual, None, "k was never written to the log");
                assert_eq!(earlier_in_batch, Some(0), "record 0 of the batch wrote k");
            }
            other => panic!("{other:?}"),
        }
        // Same with a key in the log: the conflict names the log's offset, not `base + 0`
        // of the rejected batch (offset 3, which does not exist).
        shard
            .append(partition, None, &[record(b"k", b"c", KeyCondition::NoKey)])
            .await
            .unwrap();
        let doomed = shard
            .append(
                partition,
                None,
                &[
                    record(b"k", b"d", KeyCondition::At(Offset(2))),
                    record(b"k", b"e", KeyCondition::At(Offset(2))),
                ],
            )
            .await;
        match doomed {
            Ok(AppendOutcome::ConditionFailed(Conflict::Key {
                record_index: 1,
                actual,
                earlier_in_batch,
                ..
            })) => {
                assert_eq!(
                    actual,
                    Some(Offset(2)),
                    "the key's latest offset in the log"
                );
                assert_eq!(earlier_in_batch, Some(0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(shard.end_offsets(partition).unwrap().0, Offset(3));
        shard.close().await;
    });
}
