//! What one client does in one cycle, as plain code over [`LogOps`]: keys, values, and the
//! read → append → conflict → retry-or-abandon logic of a command handler.
//!
//! Nothing here measures time or touches the network: `client.rs` runs cycles against the
//! real [`cairn_client::Client`] and times them, and the tests below run them
//! against a scripted fake. A cycle ends in exactly one [`CycleOutcome`]; a conflict is an
//! expected outcome of an append (a value), never an error.

use std::io::Write;

use cairn_client::{AppendResult, ClientError, Contention, Turn};
use cairn_engine::core::{KeyCondition, Offset, RecordInput};
use cairn_wire::ConflictInfo;

use crate::config::{ReadMode, RetryMode, Workload};
use crate::rng::Rng;

/// Digits of the zero-padded key number at least (`key-000123`); more when `--keys` needs it.
const KEY_DIGIT_COUNT_MIN: usize = 6;

/// The bytes of a key name before its number.
const KEY_PREFIX: &str = "key-";

/// Bytes of the name of key `index` when there are `key_count` keys: all names have the
/// same length, so they sort in number order.
#[must_use]
pub fn key_size_bytes(key_count: u64) -> usize {
    let largest = key_count.saturating_sub(1);
    let digit_count = largest.checked_ilog10().map_or(1, |log| log as usize + 1);
    KEY_PREFIX.len() + digit_count.max(KEY_DIGIT_COUNT_MIN)
}

/// The name of key `index` (0-based) among `key_count`: ASCII, e.g. `key-000123`.
#[must_use]
pub fn key_name(index: u64, key_count: u64) -> Vec<u8> {
    let width = key_size_bytes(key_count) - KEY_PREFIX.len();
    format!("{KEY_PREFIX}{index:0width$}").into_bytes()
}

/// The values of one client's appends: `batch` buffers of `value_bytes` random
/// alphanumeric bytes, each stamped with who wrote it before every append so that no two
/// acknowledged records of a run have the same value (a crash check by checksum can tell
/// them apart) when `value_bytes` leaves room for the stamp.
#[derive(Debug)]
pub struct Values {
    buffers: Vec<Vec<u8>>,
}

impl Values {
    /// Random filler from `rng`; `batch` and `value_bytes` are validated flags.
    #[must_use]
    pub fn new(rng: &mut Rng, batch: u32, value_bytes: u32) -> Values {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let buffers = (0..batch)
            .map(|_| {
                (0..value_bytes)
                    .map(|_| {
                        let index = usize::try_from(rng.below(ALPHABET.len() as u64))
                            .expect("an index below the alphabet's length fits usize");
                        ALPHABET.get(index).copied().unwrap_or(b'x')
                    })
                    .collect()
            })
            .collect();
        Values { buffers }
    }

    /// Overwrites the front of each value with `client`, `sequence` (the client's cycle
    /// number) and the record's index, as far as the value is long.
    pub fn stamp(&mut self, client: u32, sequence: u64) {
        for (index, buffer) in self.buffers.iter_mut().enumerate() {
            let mut front: &mut [u8] = buffer;
            // A short value keeps what fits of the stamp: the rest is dropped on purpose.
            let _ = write!(front, "c{client}s{sequence}r{index}.");
        }
    }

    /// The current values, one per record of the batch.
    #[must_use]
    pub fn as_slices(&self) -> &[Vec<u8>] {
        &self.buffers
    }
}

/// What a client knows of its own key's latest offset between cycles (`uncontended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latest {
    /// Not known (after an error, whose append may or may not have happened): read first.
    Unknown,
    /// The key has no record yet, as far as this client knows: append with `no_key`.
    Absent,
    /// The key's latest record is here: append `at` it.
    At(Offset),
}

impl Latest {
    fn from_offset(offset: Option<Offset>) -> Latest {
        offset.map_or(Latest::Absent, Latest::At)
    }
}

/// The two requests a cycle makes. Implemented over the real client in `client.rs` and by a
/// scripted fake in the tests.
#[expect(
    async_fn_in_trait,
    reason = "implemented and called only inside this crate, on one executor: no Send bound \
              is wanted"
)]
pub trait LogOps {
    /// The offset of `key`'s latest record (synced only, or including appended records),
    /// `None` when the key has none.
    async fn read_latest(&self, key: &[u8], read: ReadMode) -> Result<Option<Offset>, ClientError>;

    /// Appends `records` atomically to the partition of their key.
    async fn append(&self, records: &[RecordInput<'_>]) -> Result<AppendResult, ClientError>;
}

/// How cycles go, from the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CyclePolicy {
    /// The workload: whether appends are conditional, and where the expected offset comes
    /// from (a read each cycle for `hot`, the previous append for `uncontended`).
    pub workload: Workload,
    /// The read a `hot` cycle starts with, and a re-read after a conflict.
    pub read: ReadMode,
    /// What follows a conflict.
    pub retry: RetryMode,
    /// Retries after conflicts before the cycle is abandoned.
    pub retry_count_max: u32,
}

/// Why a cycle failed: a request failed, or the server answered what cannot happen.
#[derive(Debug)]
pub enum CycleError {
    /// A request failed (connection, timeout, server error). An append that failed this way
    /// may still have taken effect.
    Client(ClientError),
    /// A conflict the request could not cause: on an unconditional append, or about the
    /// end offset, which the load generator never conditions on.
    UnexpectedConflict(ConflictInfo),
}

impl std::fmt::Display for CycleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CycleError::Client(error) => write!(f, "{error}"),
            CycleError::UnexpectedConflict(info) => {
                write!(f, "conflict {info:?} on an append that cannot conflict so")
            }
        }
    }
}

/// How a cycle ended, with the conflicts it met on the way.
#[derive(Debug)]
pub enum CycleOutcome {
    /// The batch was appended and synced (acknowledged).
    Succeeded {
        /// The partition it went to.
        partition: u32,
        /// Its first record's offset.
        base_offset: Offset,
        /// How many records it held.
        record_count: u32,
        /// Conflicts before it succeeded.
        conflict_count: u32,
    },
    /// Every attempt conflicted: `retry_count_max + 1` conflicts.
    Abandoned {
        /// Conflicts met, one per attempt.
        conflict_count: u32,
    },
    /// A request failed; the cycle stopped there.
    Failed {
        /// Conflicts before the failure.
        conflict_count: u32,
        /// What failed.
        error: CycleError,
    },
}

/// The batch of one append: every record has `key`; the first carries `condition`, and the
/// others need none because a batch is atomic (docs/DESIGN.md §1): they are appended right after
/// the first, or not at all.
fn batch_records<'a>(
    key: &'a [u8],
    values: &'a [Vec<u8>],
    condition: KeyCondition,
) -> Vec<RecordInput<'a>> {
    values
        .iter()
        .enumerate()
        .map(|(index, value)| RecordInput {
            key,
            value,
            headers: &[],
            condition: if index == 0 {
                condition
            } else {
                KeyCondition::Any
            },
            ..RecordInput::default()
        })
        .collect()
}

/// Runs one cycle on `key` with `values` as the batch, and keeps `latest` (the client's
/// knowledge of the key) up to date for the next one.
///
/// - `blind`: one unconditional append.
/// - `uncontended`: append `at(latest)` (`no_key` when absent; read first when unknown).
/// - `hot`: read the key (`policy.read`), append at what was read.
///
/// On a conflict, up to `retry_count_max` retries: at the offset the conflict carries
/// (`from-conflict`), or at a fresh read (`reread`). Then the cycle is abandoned.
///
/// A `hot` cycle goes through `contention`: it takes the key's turn before reading and
/// gives it up once its append is sent; after a conflict it backs off and takes the turn
/// again, and reads again if other clients had the turn meanwhile (the conflict's offset is
/// stale by then).
pub async fn run_cycle<L: LogOps>(
    ops: &L,
    policy: &CyclePolicy,
    contention: &Contention,
    key: &[u8],
    values: &[Vec<u8>],
    latest: &mut Latest,
) -> CycleOutcome {
    let mut conflict_count = 0u32;
    let mut turn: Option<Turn> = None;
    let failed = |conflict_count, error| CycleOutcome::Failed {
        conflict_count,
        error,
    };
    let mut expected = match (policy.workload, *latest) {
        (Workload::Blind, _) => {
            return blind_cycle(ops, key, values).await;
        }
        (Workload::Hot, _) | (Workload::Uncontended, Latest::Unknown) => {
            if policy.workload == Workload::Hot {
                turn = Some(contention.turn(key).await);
            }
            let read = match policy.workload {
                Workload::Hot => policy.read,
                // The client's own key: only its own append could be pending, and that one
                // it must see, or it would conflict with itself.
                Workload::Uncontended | Workload::Blind => ReadMode::Appended,
            };
            match ops.read_latest(key, read).await {
                Ok(offset) => offset,
                Err(error) => return failed(0, CycleError::Client(error)),
            }
        }
        (Workload::Uncontended, Latest::Absent) => None,
        (Workload::Uncontended, Latest::At(offset)) => Some(offset),
    };
    loop {
        let condition = expected.map_or(KeyCondition::NoKey, KeyCondition::At);
        let records = batch_records(key, values, condition);
        let result = match turn.take() {
            Some(turn) => turn.release_after_send(ops.append(&records)).await,
            None => ops.append(&records).await,
        };
        match result {
            Ok(AppendResult::Appended {
                partition,
                base_offset,
                record_count,
                ..
            }) => {
                let last = base_offset.plus(u64::from(record_count.saturating_sub(1)));
                *latest = Latest::At(last);
                return CycleOutcome::Succeeded {
                    partition,
                    base_offset,
                    record_count,
                    conflict_count,
                };
            }
            Ok(AppendResult::Conflict {
                info: ConflictInfo::Key { current_offset, .. },
                ..
            }) => {
                conflict_count += 1;
                *latest = Latest::from_offset(current_offset);
                if conflict_count > policy.retry_count_max {
                    return CycleOutcome::Abandoned { conflict_count };
                }
                let mut retry = policy.retry;
                if policy.workload == Workload::Hot {
                    contention.conflicted(conflict_count).await;
                    let next = contention.turn(key).await;
                    if next.waited() {
                        retry = RetryMode::Reread;
                    }
                    turn = Some(next);
                }
                expected = match retry {
                    RetryMode::FromConflict => current_offset,
                    RetryMode::Reread => match ops.read_latest(key, policy.read).await {
                        Ok(offset) => offset,
                        Err(error) => return failed(conflict_count, CycleError::Client(error)),
                    },
                };
            }
            Ok(AppendResult::Conflict { info, .. }) => {
                *latest = Latest::Unknown;
                return failed(conflict_count, CycleError::UnexpectedConflict(info));
            }
            Err(error) => {
                // The append may have happened: only a read can tell.
                *latest = Latest::Unknown;
                return failed(conflict_count, CycleError::Client(error));
            }
        }
    }
}

async fn blind_cycle<L: LogOps>(ops: &L, key: &[u8], values: &[Vec<u8>]) -> CycleOutcome {
    let records = batch_records(key, values, KeyCondition::Any);
    match ops.append(&records).await {
        Ok(AppendResult::Appended {
            partition,
            base_offset,
            record_count,
            ..
        }) => CycleOutcome::Succeeded {
            partition,
            base_offset,
            record_count,
            conflict_count: 0,
        },
        Ok(AppendResult::Conflict { info, .. }) => CycleOutcome::Failed {
            conflict_count: 0,
            error: CycleError::UnexpectedConflict(info),
        },
        Err(error) => CycleOutcome::Failed {
            conflict_count: 0,
            error: CycleError::Client(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::*;

    /// A request the fake saw.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Read(ReadMode),
        /// The first record's condition and the batch's size.
        Append(KeyCondition, usize),
    }

    /// The answer the fake gives to the next request.
    enum Scripted {
        Read(Option<Offset>),
        Appended(u64),
        Conflict(Option<Offset>),
        Timeout,
    }

    /// A fake log that answers from a script and records every request.
    #[derive(Default)]
    struct ScriptedLog {
        script: RefCell<VecDeque<Scripted>>,
        seen: RefCell<Vec<Seen>>,
    }

    impl ScriptedLog {
        fn new(script: impl IntoIterator<Item = Scripted>) -> ScriptedLog {
            ScriptedLog {
                script: RefCell::new(script.into_iter().collect()),
                seen: RefCell::default(),
            }
        }

        fn next(&self, seen: Seen) -> Scripted {
            self.seen.borrow_mut().push(seen.clone());
            self.script
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| panic!("no scripted answer left for {seen:?}"))
        }

        fn timeout() -> ClientError {
            ClientError::Timeout {
                address: SocketAddr::from(([127, 0, 0, 1], 1)),
                timeout: Duration::from_secs(1),
            }
        }
    }

    impl LogOps for ScriptedLog {
        async fn read_latest(
            &self,
            _key: &[u8],
            read: ReadMode,
        ) -> Result<Option<Offset>, ClientError> {
            match self.next(Seen::Read(read)) {
                Scripted::Read(offset) => Ok(offset),
                Scripted::Timeout => Err(ScriptedLog::timeout()),
                _ => panic!("a read was answered with an append's result"),
            }
        }

        async fn append(&self, records: &[RecordInput<'_>]) -> Result<AppendResult, ClientError> {
            assert!(
                records[1..]
                    .iter()
                    .all(|record| record.condition == KeyCondition::Any),
                "only the first record of a batch carries a condition"
            );
            match self.next(Seen::Append(records[0].condition, records.len())) {
                Scripted::Appended(base_offset) => Ok(AppendResult::Appended {
                    partition: 0,
                    base_offset: Offset(base_offset),
                    record_count: u32::try_from(records.len()).unwrap(),
                    duplicate: false,
                }),
                Scripted::Conflict(current_offset) => Ok(AppendResult::Conflict {
                    info: ConflictInfo::Key {
                        record_index: 0,
                        condition: records[0].condition,
                        current_offset,
                    },
                    message: "scripted".to_owned(),
                }),
                Scripted::Timeout => Err(ScriptedLog::timeout()),
                Scripted::Read(_) => panic!("an append was answered with a read's result"),
            }
        }
    }

    /// Polls a future that never waits (the fake answers at once) to completion.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the scripted fake never waits"),
        }
    }

    fn policy(workload: Workload, retry: RetryMode, retry_count_max: u32) -> CyclePolicy {
        CyclePolicy {
            workload,
            read: ReadMode::Synced,
            retry,
            retry_count_max,
        }
    }

    fn cycle(
        log: &ScriptedLog,
        policy: CyclePolicy,
        batch: usize,
        latest: &mut Latest,
    ) -> CycleOutcome {
        let values = vec![b"value".to_vec(); batch];
        let contention = Contention::new(cairn_client::ContentionPolicy::None, 1);
        block_on(run_cycle(
            log,
            &policy,
            &contention,
            b"key-000000",
            &values,
            latest,
        ))
    }

    use KeyCondition::{Any, At, NoKey};

    #[test]
    fn hot_cycle_reads_then_appends_at_what_it_read() {
        let log = ScriptedLog::new([Scripted::Read(Some(Offset(7))), Scripted::Appended(9)]);
        let mut latest = Latest::Unknown;
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::FromConflict, 3),
            1,
            &mut latest,
        );
        assert!(matches!(
            outcome,
            CycleOutcome::Succeeded {
                base_offset: Offset(9),
                record_count: 1,
                conflict_count: 0,
                ..
            }
        ));
        assert_eq!(
            *log.seen.borrow(),
            [Seen::Read(ReadMode::Synced), Seen::Append(At(Offset(7)), 1)]
        );
    }

    #[test]
    fn hot_cycle_on_a_new_key_appends_with_no_key() {
        let log = ScriptedLog::new([Scripted::Read(None), Scripted::Appended(0)]);
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::FromConflict, 3),
            1,
            &mut Latest::Unknown,
        );
        assert!(matches!(outcome, CycleOutcome::Succeeded { .. }));
        assert_eq!(log.seen.borrow()[1], Seen::Append(NoKey, 1));
    }

    /// Runs `make`'s future on a glommio executor: backoff sleeps on its timer.
    fn on_executor<T: Send + 'static, F: Future<Output = T> + 'static>(
        make: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(2 << 20)
            .spawn(make)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn queued_cycle_backs_off_and_retries_from_the_conflict_when_alone_on_the_key() {
        let (outcome, seen, key_count) = on_executor(|| async {
            let log = ScriptedLog::new([
                Scripted::Read(Some(Offset(3))),
                Scripted::Conflict(Some(Offset(5))),
                Scripted::Appended(6),
            ]);
            let contention = Contention::new(
                cairn_client::ContentionPolicy::Queue(cairn_client::Backoff::default()),
                1,
            );
            let values = vec![b"value".to_vec()];
            let outcome = run_cycle(
                &log,
                &policy(Workload::Hot, RetryMode::FromConflict, 2),
                &contention,
                b"key-000000",
                &values,
                &mut Latest::Unknown,
            )
            .await;
            (
                format!("{outcome:?}"),
                log.seen.take(),
                contention.key_count(),
            )
        });
        assert!(outcome.contains("conflict_count: 1"), "{outcome}");
        // Nobody else had the turn: the conflict's offset is still the best guess.
        assert_eq!(
            seen,
            [
                Seen::Read(ReadMode::Synced),
                Seen::Append(At(Offset(3)), 1),
                Seen::Append(At(Offset(5)), 1),
            ]
        );
        assert_eq!(key_count, 0, "the turn is given back");
    }

    #[test]
    fn retry_from_conflict_uses_the_offset_the_conflict_carries() {
        let log = ScriptedLog::new([
            Scripted::Read(Some(Offset(3))),
            Scripted::Conflict(Some(Offset(5))),
            Scripted::Conflict(Some(Offset(8))),
            Scripted::Appended(9),
        ]);
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::FromConflict, 2),
            1,
            &mut Latest::Unknown,
        );
        assert!(matches!(
            outcome,
            CycleOutcome::Succeeded {
                conflict_count: 2,
                ..
            }
        ));
        assert_eq!(
            *log.seen.borrow(),
            [
                Seen::Read(ReadMode::Synced),
                Seen::Append(At(Offset(3)), 1),
                Seen::Append(At(Offset(5)), 1),
                Seen::Append(At(Offset(8)), 1),
            ]
        );
    }

    #[test]
    fn retry_reread_reads_again_before_each_retry() {
        let log = ScriptedLog::new([
            Scripted::Read(Some(Offset(3))),
            Scripted::Conflict(Some(Offset(5))),
            Scripted::Read(Some(Offset(6))),
            Scripted::Appended(7),
        ]);
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::Reread, 2),
            1,
            &mut Latest::Unknown,
        );
        assert!(matches!(
            outcome,
            CycleOutcome::Succeeded {
                conflict_count: 1,
                ..
            }
        ));
        assert_eq!(
            *log.seen.borrow(),
            [
                Seen::Read(ReadMode::Synced),
                Seen::Append(At(Offset(3)), 1),
                Seen::Read(ReadMode::Synced),
                Seen::Append(At(Offset(6)), 1),
            ]
        );
    }

    #[test]
    fn cycle_is_abandoned_after_max_retries() {
        // retry_count_max = 2: three attempts, three conflicts, then give up (no 4th append).
        let log = ScriptedLog::new([
            Scripted::Read(None),
            Scripted::Conflict(Some(Offset(1))),
            Scripted::Conflict(Some(Offset(2))),
            Scripted::Conflict(Some(Offset(3))),
        ]);
        let mut latest = Latest::Unknown;
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::FromConflict, 2),
            1,
            &mut latest,
        );
        assert!(matches!(
            outcome,
            CycleOutcome::Abandoned { conflict_count: 3 }
        ));
        assert_eq!(log.seen.borrow().len(), 4);
        assert!(log.script.borrow().is_empty());
        assert_eq!(latest, Latest::At(Offset(3)));
    }

    #[test]
    fn zero_retries_abandon_at_the_first_conflict() {
        let log = ScriptedLog::new([Scripted::Read(None), Scripted::Conflict(Some(Offset(0)))]);
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::Reread, 0),
            1,
            &mut Latest::Unknown,
        );
        assert!(matches!(
            outcome,
            CycleOutcome::Abandoned { conflict_count: 1 }
        ));
    }

    #[test]
    fn uncontended_chains_on_its_previous_append_without_reading() {
        let log = ScriptedLog::new([Scripted::Appended(0), Scripted::Appended(4)]);
        let mut latest = Latest::Absent;
        let policy = policy(Workload::Uncontended, RetryMode::FromConflict, 3);
        cycle(&log, policy, 4, &mut latest);
        // A batch of 4 at 0..4: the key's latest record is the batch's last, at 3.
        assert_eq!(latest, Latest::At(Offset(3)));
        cycle(&log, policy, 4, &mut latest);
        assert_eq!(latest, Latest::At(Offset(7)));
        assert_eq!(
            *log.seen.borrow(),
            [Seen::Append(NoKey, 4), Seen::Append(At(Offset(3)), 4)]
        );
    }

    #[test]
    fn uncontended_reads_its_key_after_an_error() {
        // The timed-out append may have happened: the next cycle reads (pending included,
        // or it would conflict with its own unsynced append) instead of guessing.
        let log = ScriptedLog::new([
            Scripted::Timeout,
            Scripted::Read(Some(Offset(11))),
            Scripted::Appended(12),
        ]);
        let mut latest = Latest::At(Offset(10));
        let policy = policy(Workload::Uncontended, RetryMode::FromConflict, 3);
        let outcome = cycle(&log, policy, 1, &mut latest);
        assert!(matches!(
            outcome,
            CycleOutcome::Failed {
                error: CycleError::Client(ClientError::Timeout { .. }),
                ..
            }
        ));
        assert_eq!(latest, Latest::Unknown);
        cycle(&log, policy, 1, &mut latest);
        assert_eq!(
            *log.seen.borrow(),
            [
                Seen::Append(At(Offset(10)), 1),
                Seen::Read(ReadMode::Appended),
                Seen::Append(At(Offset(11)), 1),
            ]
        );
        assert_eq!(latest, Latest::At(Offset(12)));
    }

    #[test]
    fn a_failed_read_fails_the_cycle_without_appending() {
        let log = ScriptedLog::new([Scripted::Timeout]);
        let outcome = cycle(
            &log,
            policy(Workload::Hot, RetryMode::FromConflict, 3),
            1,
            &mut Latest::Unknown,
        );
        assert!(matches!(
            outcome,
            CycleOutcome::Failed {
                conflict_count: 0,
                ..
            }
        ));
        assert_eq!(*log.seen.borrow(), [Seen::Read(ReadMode::Synced)]);
    }

    #[test]
    fn blind_appends_without_conditions_or_reads() {
        let log = ScriptedLog::new([Scripted::Appended(0), Scripted::Conflict(None)]);
        let policy = policy(Workload::Blind, RetryMode::FromConflict, 3);
        let outcome = cycle(&log, policy, 2, &mut Latest::Absent);
        assert!(matches!(outcome, CycleOutcome::Succeeded { .. }));
        // A conflict on an unconditional append is impossible: reported, not retried.
        let outcome = cycle(&log, policy, 2, &mut Latest::Absent);
        assert!(matches!(
            outcome,
            CycleOutcome::Failed {
                error: CycleError::UnexpectedConflict(_),
                ..
            }
        ));
        assert_eq!(
            *log.seen.borrow(),
            [Seen::Append(Any, 2), Seen::Append(Any, 2)]
        );
    }

    #[test]
    fn key_names_are_padded_ascii() {
        assert_eq!(key_name(123, 1000), b"key-000123");
        assert_eq!(key_name(0, 1), b"key-000000");
        assert_eq!(key_name(12_345_678, 20_000_000), b"key-12345678");
        assert_eq!(key_size_bytes(1000), 10);
        assert_eq!(key_size_bytes(10_000_001), 12);
    }

    #[test]
    fn values_are_stamped_and_sized() {
        let mut rng = Rng::new(1);
        let mut values = Values::new(&mut rng, 3, 32);
        values.stamp(7, 42);
        let slices = values.as_slices();
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|value| value.len() == 32));
        assert!(slices[2].starts_with(b"c7s42r2."));
        // Too short for the stamp: truncated, never grown.
        let mut short = Values::new(&mut rng, 1, 3);
        short.stamp(7, 42);
        assert_eq!(short.as_slices()[0], b"c7s");
    }
}
