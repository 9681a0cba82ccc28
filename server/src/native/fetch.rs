//! `Fetch`: records from an offset, long-polling when none is synced yet, cut to the
//! asked size (and `FETCH_SIZE_BYTES_MAX`) as encoded, at least one record.
//!
//! Sizes are counted as records are encoded (`wire::record_out_size_bytes_max`: keys,
//! values, headers and the flatbuffer's overhead per record and header), not as they are
//! stored: a 1-byte record takes ~26 bytes in a batch but ~60 in a response. A response
//! holds at least one record when one is available, even a larger one, so that a reader
//! always gets past it.

use std::ops::Range;

use cairn_engine::{OwnedRecord, RecordHeader};
use cairn_wire::{
    self as wire, FetchRequest, Fetched, HeaderList, RecordOut, RecordOutList, ResponseBody,
};

use super::session::Session;
use crate::context::ShardContext;
use crate::operation::FetchedRecords;
use crate::service::{self, FETCH_SIZE_BYTES_MAX};

// Either way the response fits in a client's default frame limit: records up to the limit,
// or a single record of any size (which `wire` checks against the same frame limit).
const _: () = assert!(
    FETCH_SIZE_BYTES_MAX + wire::RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX
        <= wire::FRAME_SIZE_BYTES_MAX_DEFAULT as usize
);
const _: () = assert!(
    wire::RECORD_OUT_SIZE_BYTES_MAX + wire::RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX
        <= wire::FRAME_SIZE_BYTES_MAX_DEFAULT as usize
);

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: FetchRequest<'_>,
) {
    let result = service::fetch(
        context,
        request.topic,
        request.partition,
        request.offset,
        request.size_bytes_max,
        request.wait_max,
        session.hung_up(),
    )
    .await;
    let fetched = match result {
        Ok(fetched) => fetched,
        Err(failure) => return session.fail(correlation_id, &failure).await,
    };
    let size_bytes_max = (request.size_bytes_max as usize).min(FETCH_SIZE_BYTES_MAX);
    let from = fetched.from;
    match &fetched.records {
        FetchedRecords::Batches(batches) => {
            // Records to send, with their headers' range in `headers` (which must stop
            // growing before anything borrows from it).
            let mut kept: Vec<(RecordOut<'_>, Range<usize>)> = Vec::new();
            let mut headers: Vec<RecordHeader<'_>> = Vec::new();
            let mut size_bytes = 0;
            'batches: for batch in &batches.batches {
                let view = batch.view();
                for record in view.records().filter(|record| record.offset >= from) {
                    let headers_start = headers.len();
                    headers.extend(record.headers());
                    let headers_range = headers_start..headers.len();
                    let record_size_bytes = wire::record_out_size_bytes_max(
                        record.key,
                        record.value,
                        headers
                            .get(headers_range.clone())
                            .unwrap_or_default()
                            .iter()
                            .copied(),
                    );
                    // At least one record, however large, so that the reader gets past it.
                    if !kept.is_empty() && size_bytes + record_size_bytes > size_bytes_max {
                        break 'batches;
                    }
                    size_bytes += record_size_bytes;
                    let out = RecordOut {
                        offset: record.offset,
                        timestamp_ms: view.timestamp_ms(),
                        key: record.key,
                        value: record.value,
                        headers: HeaderList::default(),
                        prev_key_offset: record.prev_key_offset,
                    };
                    kept.push((out, headers_range));
                }
            }
            let outs: Vec<RecordOut<'_>> = kept
                .into_iter()
                .map(|(out, headers_range)| RecordOut {
                    headers: HeaderList::from_slice(headers.get(headers_range).unwrap_or_default()),
                    ..out
                })
                .collect();
            respond(
                session,
                correlation_id,
                fetched.partition,
                &outs,
                fetched.synced_end,
            )
            .await;
        }
        FetchedRecords::Owned(records) => {
            let headers: Vec<Vec<RecordHeader<'_>>> = records.iter().map(header_list).collect();
            let mut outs: Vec<RecordOut<'_>> = Vec::new();
            let mut size_bytes = 0;
            for (record, headers) in records.iter().zip(&headers) {
                let out = record_out(record, headers);
                let record_size_bytes = out.encoded_size_bytes_max();
                // At least one record, however large, so that the reader gets past it.
                if !outs.is_empty() && size_bytes + record_size_bytes > size_bytes_max {
                    break;
                }
                size_bytes += record_size_bytes;
                outs.push(out);
            }
            respond(
                session,
                correlation_id,
                fetched.partition,
                &outs,
                fetched.synced_end,
            )
            .await;
        }
    }
}

async fn respond(
    session: &Session,
    correlation_id: u64,
    partition: u32,
    outs: &[RecordOut<'_>],
    synced_end: cairn_engine::Offset,
) {
    let body = ResponseBody::Fetched(Fetched {
        partition,
        records: RecordOutList::from_slice(outs),
        synced_end,
    });
    session.respond(correlation_id, body).await;
}

/// An owned record's headers as the wire's borrowed headers.
pub(super) fn header_list(record: &OwnedRecord) -> Vec<RecordHeader<'_>> {
    record
        .headers
        .iter()
        .map(|(name, value)| RecordHeader { name, value })
        .collect()
}

/// An owned record as the wire encodes it, with `headers` from [`header_list`].
pub(super) fn record_out<'a>(
    record: &'a OwnedRecord,
    headers: &'a [RecordHeader<'a>],
) -> RecordOut<'a> {
    RecordOut {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: &record.key,
        value: &record.value,
        headers: HeaderList::from_slice(headers),
        prev_key_offset: record.prev_key_offset,
    }
}
