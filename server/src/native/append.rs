//! `Append`: one batch, answered `Appended` once synced (or, for a producer's retry of a
//! batch appended before, at once with the original offsets), or `Conflict` with the
//! current value when a condition failed.

use cairn_engine::RecordInput;
use cairn_engine::core::condition::Conflict;
use cairn_wire::{AppendRequest, Appended, ConflictInfo, ErrorCode, ErrorResponse, ResponseBody};

use super::session::Session;
use crate::context::ShardContext;
use crate::operation::AppendResult;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: AppendRequest<'_>,
) {
    let started = std::time::Instant::now();
    let records: Vec<RecordInput<'_>> = request.records.iter().collect();
    let result = service::append(
        context,
        request.topic,
        request.partition,
        request.expected_end_offset,
        &records,
        request.producer,
    )
    .await;
    context
        .metrics
        .native_append_service_us
        .observe_duration_us(started.elapsed());
    match result {
        Ok(AppendResult::Appended {
            partition,
            base_offset,
            record_count,
            duplicate,
        }) => {
            let body = ResponseBody::Appended(Appended {
                partition,
                base_offset,
                record_count,
                duplicate,
            });
            session.respond(correlation_id, body).await;
        }
        Ok(AppendResult::ConditionFailed { conflict, .. }) => {
            let message = conflict.to_string();
            let info = match conflict {
                Conflict::EndOffset { actual, .. } => ConflictInfo::EndOffset {
                    current_end_offset: actual,
                },
                // The message says when the batch contradicts itself; the wire carries the
                // key's latest offset in the log either way.
                Conflict::Key {
                    record_index,
                    condition,
                    actual,
                    ..
                } => ConflictInfo::Key {
                    record_index,
                    condition,
                    current_offset: actual,
                },
            };
            let body = ResponseBody::Error(ErrorResponse {
                code: ErrorCode::Conflict,
                message: &message,
                conflict: Some(info),
                log_start: None,
            });
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
