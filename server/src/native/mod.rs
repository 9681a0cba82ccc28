//! The native front end: Cairn's flatbuffers protocol (`cairn-wire`) over TCP, on top of
//! the service.
//!
//! `connection` reads frames from one socket under the connection's and the shard's
//! budgets and runs [`handle_frame`] for each; `handle_frame` decodes the frame once and
//! hands it to the module of its kind, which calls the service and encodes the typed
//! result straight into the connection's write buffer (`session`). A new request kind is a
//! new module here plus a service call.
//!
//! Module order (each uses only those before it): `session`, the request kinds (`ping`,
//! `metadata`, `create_topic`, `append`, `fetch`, `read_key`, `key_history`,
//! `init_producer`, `commit_offsets`, `fetch_offsets`, `backup`), this file's
//! dispatch, `connection`.

mod append;
mod backup;
mod commit_offsets;
pub(crate) mod connection;
mod create_topic;
mod fetch;
mod fetch_offsets;
mod init_producer;
mod key_history;
mod metadata;
mod ping;
mod read_key;
mod session;

use cairn_wire::{ErrorCode, RequestBody, decode_request};

use crate::context::ShardContext;
use session::Session;

/// Handles one request frame of a connection; returns whether the connection must close
/// after the response (the frame was not a flatbuffer at all: nothing in it, not even its
/// correlation id, can be trusted, so the schema says the connection closes; or the
/// connection was abandoned).
pub(crate) async fn handle_frame(
    context: &ShardContext,
    frame: &[u8],
    session: &Session,
    received_at: std::time::Instant,
) -> bool {
    let request = match decode_request(frame) {
        Ok(request) => request,
        Err(wire_error) => {
            context.metrics.count_native_request(MALFORMED_KIND);
            tracing::debug!(%wire_error, "bad request");
            let correlation_id = wire_error.correlation_id();
            session
                .error(
                    correlation_id.unwrap_or(0),
                    wire_error.error_code(),
                    &wire_error.to_string(),
                )
                .await;
            return correlation_id.is_none();
        }
    };
    context
        .metrics
        .count_native_request(request_kind(&request.body));
    let correlation_id = request.correlation_id;
    // Responses that carry records (up to ~2 MiB each) are built a few at a time per
    // connection; see `connection`, memory bounds.
    let carries_records = matches!(
        request.body,
        RequestBody::Fetch(_)
            | RequestBody::ReadKey(_)
            | RequestBody::KeyHistory(_)
            | RequestBody::BackupRead(_)
    );
    let large_response_permit = if carries_records {
        match session.large_response_permit().await {
            Some(permit) => Some(permit),
            None => {
                session
                    .error(correlation_id, ErrorCode::Internal, "connection abandoned")
                    .await;
                return true;
            }
        }
    } else {
        None
    };
    match request.body {
        RequestBody::Ping => ping::serve(context, session, correlation_id).await,
        RequestBody::Metadata => metadata::serve(context, session, correlation_id).await,
        RequestBody::CreateTopic(create) => {
            create_topic::serve(context, session, correlation_id, create).await;
        }
        RequestBody::AlterTopic(alter) => {
            create_topic::serve_alter(context, session, correlation_id, alter).await;
        }
        RequestBody::Append(append) => {
            context
                .metrics
                .native_append_queued_us
                .observe_duration_us(received_at.elapsed());
            append::serve(context, session, correlation_id, append).await;
        }
        RequestBody::Fetch(fetch) => fetch::serve(context, session, correlation_id, fetch).await,
        RequestBody::ReadKey(read) => {
            read_key::serve(context, session, correlation_id, read).await;
        }
        RequestBody::KeyHistory(history) => {
            key_history::serve(context, session, correlation_id, history).await;
        }
        RequestBody::InitProducer => {
            init_producer::serve(context, session, correlation_id).await;
        }
        RequestBody::CommitOffsets(commit) => {
            commit_offsets::serve(context, session, correlation_id, commit).await;
        }
        RequestBody::FetchOffsets(fetch) => {
            fetch_offsets::serve(context, session, correlation_id, fetch).await;
        }
        RequestBody::BackupBegin => backup::serve_begin(context, session, correlation_id).await,
        RequestBody::BackupRead(read) => {
            backup::serve_read(context, session, correlation_id, read).await;
        }
    }
    drop(large_response_permit);
    false
}

/// `request_kind`'s index of a frame that did not decode.
const MALFORMED_KIND: usize = 13;

/// The index of `body`'s kind in `metrics::NATIVE_REQUEST_KINDS`.
fn request_kind(body: &RequestBody<'_>) -> usize {
    match body {
        RequestBody::Ping => 0,
        RequestBody::Metadata => 1,
        RequestBody::CreateTopic(_) => 2,
        RequestBody::Append(_) => 3,
        RequestBody::Fetch(_) => 4,
        RequestBody::ReadKey(_) => 5,
        RequestBody::KeyHistory(_) => 6,
        RequestBody::InitProducer => 7,
        RequestBody::CommitOffsets(_) => 8,
        RequestBody::FetchOffsets(_) => 9,
        RequestBody::BackupBegin => 10,
        RequestBody::AlterTopic(_) => 12,
        RequestBody::BackupRead(_) => 11,
    }
}

const _: () = assert!(MALFORMED_KIND + 1 == crate::metrics::NATIVE_REQUEST_KINDS.len());
