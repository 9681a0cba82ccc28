//! `ReadKey`: the latest record of a key, or none.

use cairn_engine::RecordHeader;
use cairn_wire::{KeyRecord, ReadKeyRequest, ResponseBody};

use super::fetch::{header_list, record_out};
use super::session::Session;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: ReadKeyRequest<'_>,
) {
    let result = service::read_key(
        context,
        request.topic,
        request.partition,
        request.key,
        request.include_appended,
    )
    .await;
    match result {
        Ok(read) => {
            let headers: Vec<RecordHeader<'_>> =
                read.record.as_ref().map(header_list).unwrap_or_default();
            let record = read
                .record
                .as_ref()
                .map(|record| record_out(record, &headers));
            let body = ResponseBody::KeyRecord(KeyRecord {
                partition: read.partition,
                record,
            });
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
