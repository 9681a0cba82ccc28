//! What a request handler knows of its connection: the write buffer its response is
//! encoded into, whether the client stopped sending, and the permits for responses that
//! carry records.
//!
//! Responses are encoded straight into the connection's write buffer (one copy, from the
//! flatbuffer builder to the buffer, as a length-prefixed frame), in completion order; the
//! writer (`connection`) takes the whole buffer at once and writes it in one call. A
//! handler first waits while the buffer holds `RESPONSE_QUEUE_BYTES_MAX` or more, so the
//! buffer holds at most that plus one response.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use cairn_engine::ProducerError;
use cairn_engine::io::event::Event;
use cairn_wire::{Encoder, ErrorCode, ErrorResponse, Response, ResponseBody};
use glommio::sync::{Semaphore, StaticPermit};

use crate::operation::{Failure, FailureKind};

/// Bytes of responses buffered for the socket before handlers wait for the writer.
const RESPONSE_QUEUE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Responses carrying records that may be built at once on one connection.
const LARGE_RESPONSE_COUNT_MAX: u64 = 4;

thread_local! {
    // One encoder per shard thread: its buffers keep their capacity between responses.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// One connection's side of its request handlers.
pub(crate) struct Session {
    /// Encoded response frames not yet taken by the writer.
    write_buffer: RefCell<Vec<u8>>,
    /// When the first of them was encoded (the latency breakdown's response write).
    first_encoded_at: Cell<Option<Instant>>,
    /// No more responses will come: the writer ends once the buffer is empty.
    closed: Cell<bool>,
    /// Something was written or taken, or the session closed.
    changed: Event,
    /// Permits to build a response that carries records; closed when the connection is
    /// abandoned (see `connection`).
    large_responses: Rc<Semaphore>,
    /// Raised once the client has stopped sending.
    hung_up: Event,
    is_hung_up: Cell<bool>,
}

impl Session {
    pub(crate) fn new() -> Session {
        Session {
            write_buffer: RefCell::new(Vec::new()),
            first_encoded_at: Cell::new(None),
            closed: Cell::new(false),
            changed: Event::new(),
            large_responses: Rc::new(Semaphore::new(LARGE_RESPONSE_COUNT_MAX)),
            hung_up: Event::new(),
            is_hung_up: Cell::new(false),
        }
    }

    /// Encodes `body` as the response to `correlation_id` into the write buffer, first
    /// waiting while the buffer is full.
    pub(crate) async fn respond(&self, correlation_id: u64, body: ResponseBody<'_>) {
        loop {
            let listener = self.changed.listen();
            if self.write_buffer.borrow().len() < RESPONSE_QUEUE_BYTES_MAX {
                break;
            }
            listener.await;
        }
        let response = Response {
            correlation_id,
            body,
        };
        let mut write_buffer = self.write_buffer.borrow_mut();
        if write_buffer.is_empty() {
            self.first_encoded_at.set(Some(Instant::now()));
        }
        ENCODER.with(|encoder| {
            encoder
                .borrow_mut()
                .write_response_frame(&response, &mut *write_buffer);
        });
        drop(write_buffer);
        self.changed.notify();
    }

    /// Responds with an error.
    pub(crate) async fn error(&self, correlation_id: u64, code: ErrorCode, message: &str) {
        let body = ResponseBody::Error(ErrorResponse {
            code,
            message,
            conflict: None,
            log_start: None,
        });
        self.respond(correlation_id, body).await;
    }

    /// Responds with the error a failed operation maps to.
    pub(crate) async fn fail(&self, correlation_id: u64, failure: &Failure) {
        let log_start = match failure.kind {
            FailureKind::BeforeLogStart { log_start } => Some(log_start),
            _ => None,
        };
        let body = ResponseBody::Error(ErrorResponse {
            code: error_code(failure.kind),
            message: &failure.message,
            conflict: None,
            log_start,
        });
        self.respond(correlation_id, body).await;
    }

    /// Waits for encoded responses and swaps them into `out` (which must be empty); `None`
    /// once the session is closed and everything was taken. Also returns when the first
    /// of them was encoded.
    pub(crate) async fn take(&self, out: &mut Vec<u8>) -> Option<Option<Instant>> {
        debug_assert!(out.is_empty(), "the writer hands back an empty buffer");
        loop {
            let listener = self.changed.listen();
            if !self.write_buffer.borrow().is_empty() {
                std::mem::swap(out, &mut *self.write_buffer.borrow_mut());
                self.changed.notify();
                return Some(self.first_encoded_at.take());
            }
            if self.closed.get() {
                return None;
            }
            listener.await;
        }
    }

    /// No more responses will be written.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.changed.notify();
    }

    /// A permit to build a response that carries records; `None` once the connection is
    /// abandoned, when nobody will read the records, so they should not be read or encoded.
    pub(crate) async fn large_response_permit(&self) -> Option<StaticPermit> {
        self.large_responses.acquire_static_permit(1).await.ok()
    }

    /// Makes every waiting and future `large_response_permit` fail.
    pub(crate) fn abandon_large_responses(&self) {
        self.large_responses.close();
    }

    /// Completes once the client has stopped sending (end of stream or a read error): it
    /// may still read responses, but waiting longer for records helps nobody.
    pub(crate) async fn hung_up(&self) {
        loop {
            let listener = self.hung_up.listen();
            if self.is_hung_up.get() {
                return;
            }
            listener.await;
        }
    }

    pub(crate) fn hang_up(&self) {
        self.is_hung_up.set(true);
        self.hung_up.notify();
    }
}

/// The frame refusing a connection because its shard serves `open_count_max` connections
/// already (sent just before closing).
pub(crate) fn connection_refused_frame(open_count_max: usize) -> Vec<u8> {
    let message = format!(
        "this shard serves its most connections ({open_count_max}); retry later or elsewhere"
    );
    let response = Response {
        correlation_id: 0,
        body: ResponseBody::Error(ErrorResponse {
            code: ErrorCode::Overloaded,
            message: &message,
            conflict: None,
            log_start: None,
        }),
    };
    let mut out = Vec::new();
    ENCODER.with(|encoder| {
        encoder
            .borrow_mut()
            .write_response_frame(&response, &mut out)
    });
    out
}

/// The wire's code for a kind of failure.
pub(crate) fn error_code(kind: FailureKind) -> ErrorCode {
    match kind {
        // The native protocol has no producer stamps; only Kafka's front end meets these.
        FailureKind::BadRequest | FailureKind::InternalTopic => ErrorCode::BadRequest,
        FailureKind::TooLarge => ErrorCode::TooLarge,
        FailureKind::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
        FailureKind::BeforeLogStart { .. } => ErrorCode::OffsetBeforeLogStart,
        FailureKind::InvalidConfig => ErrorCode::InvalidConfig,
        FailureKind::UnknownTopic => ErrorCode::UnknownTopic,
        FailureKind::UnknownPartition => ErrorCode::UnknownPartition,
        FailureKind::TopicExists => ErrorCode::TopicExists,
        FailureKind::Producer(ProducerError::OutOfOrder { .. }) => ErrorCode::OutOfOrderSequence,
        FailureKind::Producer(ProducerError::Fenced { .. }) => ErrorCode::ProducerFenced,
        FailureKind::StorageFailure => ErrorCode::StorageFailure,
        FailureKind::ShuttingDown => ErrorCode::ShuttingDown,
        FailureKind::BackupRangeUnavailable => ErrorCode::BackupRangeUnavailable,
        FailureKind::Internal => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use cairn_engine::Offset;

    use super::*;

    #[test]
    fn a_read_below_the_log_start_has_its_own_code() {
        let kind = FailureKind::BeforeLogStart {
            log_start: Offset(10),
        };
        assert_eq!(error_code(kind), ErrorCode::OffsetBeforeLogStart);
        assert_eq!(
            error_code(FailureKind::OffsetOutOfRange),
            ErrorCode::OffsetOutOfRange
        );
        assert_eq!(
            error_code(FailureKind::InvalidConfig),
            ErrorCode::InvalidConfig
        );
    }
}
