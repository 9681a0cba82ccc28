//! [`IdempotentProducer`]: appends that a [`BlockingClient`] may resend after an
//! outcome-unknown failure without appending twice (the schema's ProducerStamp).
//!
//! The producer holds a server-allocated id and, per partition, the sequence number its
//! next batch starts at. Each append is stamped with them; when the answer is lost (the
//! connection closed, the server restarted, a timeout), the same batch goes again with
//! the same stamp, and the server, which remembers a producer's last batches per
//! partition across restarts, answers a batch it already has with its original offsets.
//! A sequence is used up only by a batch that was appended: a conflict or a refused batch
//! leaves it for the next one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_engine::ProducerStamp;
use cairn_engine::core::{Offset, RecordInput};

use super::{AppendResult, BlockingClient, ClientError, ProducerId};

/// How long an [`IdempotentProducer`] keeps resending after outcome-unknown failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No attempt starts later than this after the first.
    pub give_up_after: Duration,
    /// The pause after the first failure; it doubles after each further one.
    pub backoff_first: Duration,
    /// The longest pause.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// Long enough for a server to be restarted and recover a modest log.
    fn default() -> RetryPolicy {
        RetryPolicy {
            give_up_after: Duration::from_secs(60),
            backoff_first: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// An idempotent producer for a [`BlockingClient`]: one batch in flight at a time, which
/// is what keeps its sequences in order.
#[derive(Debug)]
pub struct IdempotentProducer {
    id: ProducerId,
    retry: RetryPolicy,
    /// The sequence of each partition's next batch; absent means 0.
    next_sequence: HashMap<(String, u32), i32>,
}

impl IdempotentProducer {
    /// Asks the server for a producer id, retrying like an append.
    pub fn new(
        client: &mut BlockingClient,
        retry: RetryPolicy,
    ) -> Result<IdempotentProducer, ClientError> {
        let id = with_retries(client, &retry, BlockingClient::init_producer)?;
        Ok(IdempotentProducer {
            id,
            retry,
            next_sequence: HashMap::new(),
        })
    }

    /// The id and epoch this producer stamps its appends with.
    #[must_use]
    pub fn id(&self) -> ProducerId {
        self.id
    }

    /// Appends `records` like [`BlockingClient::append`], resending the batch after each
    /// outcome-unknown failure ([`ClientError::is_outcome_unknown`]) until the retry policy
    /// gives up. The batch is appended once, whatever happened to the earlier attempts: a
    /// resend of one that was appended answers `Appended` with `duplicate` set and the
    /// original offsets.
    pub fn append(
        &mut self,
        client: &mut BlockingClient,
        topic: &str,
        partition: Option<u32>,
        expected_end_offset: Option<Offset>,
        records: &[RecordInput<'_>],
    ) -> Result<AppendResult, ClientError> {
        // The sequence counts per partition, so the partition is settled before the first
        // attempt, not left to the server.
        let key = records.first().map_or(&[][..], |record| record.key);
        let partition = with_retries(client, &self.retry, |client| {
            client.partition_for(topic, partition, key)
        })?;
        let slot = (topic.to_owned(), partition);
        let base_sequence = self.next_sequence.get(&slot).copied().unwrap_or(0);
        let stamp = ProducerStamp {
            producer_id: self.id.producer_id,
            epoch: self.id.epoch,
            base_sequence,
        };
        let result = with_retries(client, &self.retry, |client| {
            client.append_as(
                topic,
                Some(partition),
                expected_end_offset,
                records,
                Some(stamp),
            )
        })?;
        if let AppendResult::Appended { record_count, .. } = result {
            self.next_sequence
                .insert(slot, sequence_after(base_sequence, record_count));
        }
        Ok(result)
    }
}

/// The sequence after a batch of `record_count` records from `base_sequence`: sequences
/// wrap from `i32::MAX` to 0, as Kafka's do.
fn sequence_after(base_sequence: i32, record_count: u32) -> i32 {
    let modulus = 1_i64 << 31;
    let next = (i64::from(base_sequence) + i64::from(record_count)) % modulus;
    i32::try_from(next).expect("a remainder of 2^31 fits in i32")
}

/// Runs `attempt` until it succeeds, fails with an error whose outcome is known, or the
/// policy gives up. Between attempts it pauses and refreshes the metadata, because a
/// server that restarted may own its partitions on other ports now.
fn with_retries<T>(
    client: &mut BlockingClient,
    retry: &RetryPolicy,
    mut attempt: impl FnMut(&mut BlockingClient) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let started = Instant::now();
    let mut backoff = retry.backoff_first;
    loop {
        match attempt(client) {
            Err(error) if error.is_outcome_unknown() && started.elapsed() < retry.give_up_after => {
                tracing::debug!(%error, ?backoff, "outcome unknown; resending");
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2).min(retry.backoff_max);
                // Its own failure is the next attempt's to report.
                let _ = client.metadata();
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use cairn_wire::RequestBody;

    use super::*;
    use crate::ClientConfig;
    use crate::fake_server::{FakeServer, MODEL_PRODUCER_ID, MODEL_TOPIC, Step, model_answer};

    #[test]
    fn a_lost_answer_is_resent_with_the_same_stamp_and_the_next_batch_moves_on() {
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&stamps);
        let server = FakeServer::start(1, move |received| {
            if let RequestBody::Append(append) = &received.request.body {
                let mut seen = seen.lock().unwrap();
                seen.push(append.producer);
                // The first attempt's answer is lost with its connection.
                if seen.len() == 1 {
                    return vec![Step::Close];
                }
            }
            model_answer(received)
        });
        let mut client = BlockingClient::connect(ClientConfig::new(server.address(0))).unwrap();
        let retry = RetryPolicy {
            backoff_first: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let mut producer = IdempotentProducer::new(&mut client, retry).unwrap();
        assert_eq!(producer.id().producer_id, MODEL_PRODUCER_ID);
        let records = [RecordInput {
            key: b"seat-1",
            value: b"v",
            ..RecordInput::default()
        }];
        for _ in 0..2 {
            let result = producer
                .append(&mut client, MODEL_TOPIC, Some(1), None, &records)
                .unwrap();
            assert!(
                matches!(result, AppendResult::Appended { .. }),
                "{result:?}"
            );
        }
        let stamp = |base_sequence| {
            Some(ProducerStamp {
                producer_id: MODEL_PRODUCER_ID,
                epoch: 0,
                base_sequence,
            })
        };
        assert_eq!(*stamps.lock().unwrap(), [stamp(0), stamp(0), stamp(1)]);
    }

    #[test]
    fn sequences_advance_by_the_record_count_and_wrap_like_kafka() {
        assert_eq!(sequence_after(0, 1), 1);
        assert_eq!(sequence_after(5, 10), 15);
        assert_eq!(sequence_after(i32::MAX, 1), 0);
        assert_eq!(sequence_after(i32::MAX - 1, 5), 3);
    }
}
