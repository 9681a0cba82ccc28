//! `KeyHistory`: a key's records, newest first, cut to `FETCH_SIZE_BYTES_MAX` of encoded
//! records (at least one).

use cairn_engine::{Offset, RecordHeader};
use cairn_wire::{KeyHistoryRequest, KeyHistoryResult, RecordOut, RecordOutList, ResponseBody};

use super::fetch::{header_list, record_out};
use super::session::Session;
use crate::context::ShardContext;
use crate::service::{self, FETCH_SIZE_BYTES_MAX};

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: KeyHistoryRequest<'_>,
) {
    let result = service::key_history(
        context,
        request.topic,
        request.partition,
        request.key,
        request.from_offset.map(Offset),
        request.record_count_max,
    )
    .await;
    let history = match result {
        Ok(history) => history,
        Err(failure) => return session.fail(correlation_id, &failure).await,
    };
    // The engine's size limit counts keys and values only, which is never more than the
    // encoded size: it returns at least what fits, and the loop below cuts.
    let headers: Vec<Vec<RecordHeader<'_>>> = history.records.iter().map(header_list).collect();
    let mut outs: Vec<RecordOut<'_>> = Vec::with_capacity(history.records.len());
    let mut size_bytes = 0;
    for (record, headers) in history.records.iter().zip(&headers) {
        let out = record_out(record, headers);
        // At least one record, however large, as for a fetch.
        size_bytes += out.encoded_size_bytes_max();
        if !outs.is_empty() && size_bytes > FETCH_SIZE_BYTES_MAX {
            break;
        }
        outs.push(out);
    }
    let body = ResponseBody::KeyHistory(KeyHistoryResult {
        partition: history.partition,
        // No record returned (a record_count_max of 0) leaves the cursor where it was.
        next_offset: outs
            .last()
            .map_or(request.from_offset.map(Offset), |record| {
                record.prev_key_offset
            })
            .map(|offset| offset.0),
        records: RecordOutList::from_slice(&outs),
    });
    session.respond(correlation_id, body).await;
}
