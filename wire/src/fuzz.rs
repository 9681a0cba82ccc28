//! Fuzz bodies: plain functions over arbitrary bytes, called by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` (built with `--cfg fuzzing`) and, on stable, by a fixed-count
//! proptest below.
//!
//! Each must return for every input without panicking. Where the input decodes, it also
//! checks the codec against itself: encoding the decoded value and decoding that again gives
//! the same value.

use super::{Encoder, FrameReader, decode_request, decode_response};

/// Frame limit for the stream half of the bodies: small, so the fuzzer also reaches the
/// oversized-frame path.
const FRAME_SIZE_BYTES_MAX: u32 = 64 * 1024;

/// Decodes `bytes` as one request frame, and as a stream of framed requests.
pub fn fuzz_decode_request(bytes: &[u8]) {
    let mut encoder = Encoder::new();
    check_request(bytes, &mut encoder);
    let mut reader = FrameReader::new(FRAME_SIZE_BYTES_MAX);
    reader.feed(bytes);
    while let Ok(Some(frame)) = reader.next_frame() {
        check_request(&frame, &mut encoder);
    }
    let _ = reader.finish();
}

/// Decodes `bytes` as one response frame, and as a stream of framed responses.
pub fn fuzz_decode_response(bytes: &[u8]) {
    let mut encoder = Encoder::new();
    check_response(bytes, &mut encoder);
    let mut reader = FrameReader::new(FRAME_SIZE_BYTES_MAX);
    reader.feed(bytes);
    while let Ok(Some(frame)) = reader.next_frame() {
        check_response(&frame, &mut encoder);
    }
    let _ = reader.finish();
}

fn check_request(frame: &[u8], encoder: &mut Encoder) {
    let Ok(request) = decode_request(frame) else {
        return;
    };
    let encoded = encoder.encode_request(&request).to_vec();
    let decoded_again = decode_request(&encoded);
    assert_eq!(
        decoded_again.as_ref(),
        Ok(&request),
        "request re-encoded differently"
    );
}

fn check_response(frame: &[u8], encoder: &mut Encoder) {
    let Ok(response) = decode_response(frame) else {
        return;
    };
    // Comparing walks every lazily decoded record and header of the frame.
    let encoded = encoder.encode_response(&response).to_vec();
    let decoded_again = decode_response(&encoded);
    assert_eq!(
        decoded_again.as_ref(),
        Ok(&response),
        "response re-encoded differently"
    );
}

#[cfg(test)]
mod tests {
    use cairn_engine::core::{KeyCondition, Offset, RecordHeader, RecordInput};
    use proptest::prelude::*;

    use super::*;
    use crate::{
        AppendRecords, AppendRequest, ConflictInfo, ErrorCode, ErrorResponse, Fetched, HeaderList,
        RecordOut, RecordOutList, Request, RequestBody, Response, ResponseBody,
    };

    const HEADERS: [RecordHeader<'static>; 1] = [RecordHeader {
        name: b"event-type",
        value: b"SeatBooked",
    }];

    /// Valid frames for mutation: random bytes alone rarely get past the verifier.
    fn request_corpus() -> Vec<Vec<u8>> {
        let records = [
            RecordInput {
                key: b"k",
                value: b"v",
                headers: &HEADERS,
                condition: KeyCondition::NoKey,
                ..RecordInput::default()
            },
            RecordInput {
                key: b"",
                value: b"",
                headers: &[],
                condition: KeyCondition::At(Offset(3)),
                ..RecordInput::default()
            },
        ];
        let append = Request {
            correlation_id: 1,
            body: RequestBody::Append(AppendRequest {
                topic: "t",
                partition: Some(1),
                expected_end_offset: Some(Offset(2)),
                records: AppendRecords::from_inputs(&records),
                producer: Some(cairn_engine::ProducerStamp {
                    producer_id: 7,
                    epoch: 1,
                    base_sequence: 40,
                }),
            }),
        };
        let ping = Request {
            correlation_id: 2,
            body: RequestBody::Ping,
        };
        let mut encoder = Encoder::new();
        vec![
            encoder.encode_request(&append).to_vec(),
            encoder.encode_request(&ping).to_vec(),
        ]
    }

    fn response_corpus() -> Vec<Vec<u8>> {
        let records = [RecordOut {
            offset: Offset(5),
            timestamp_ms: 9,
            key: b"k",
            value: b"v",
            headers: HeaderList::from_slice(&HEADERS),
            prev_key_offset: Some(Offset(1)),
        }];
        let fetched = Response {
            correlation_id: 1,
            body: ResponseBody::Fetched(Fetched {
                partition: 0,
                records: RecordOutList::from_slice(&records),
                synced_end: Offset(6),
            }),
        };
        let conflict = Response {
            correlation_id: 2,
            body: ResponseBody::Error(ErrorResponse {
                code: ErrorCode::Conflict,
                message: "m",
                conflict: Some(ConflictInfo::Key {
                    record_index: 0,
                    condition: KeyCondition::KeyExists,
                    current_offset: None,
                }),
                log_start: None,
            }),
        };
        let mut encoder = Encoder::new();
        vec![
            encoder.encode_response(&fetched).to_vec(),
            encoder.encode_response(&conflict).to_vec(),
        ]
    }

    /// Overwrites a few bytes of `frame`, each at a random position.
    fn mutate(mut frame: Vec<u8>, edits: &[(prop::sample::Index, u8)]) -> Vec<u8> {
        for (position, byte) in edits {
            let position = position.index(frame.len());
            frame[position] = *byte;
        }
        frame
    }

    fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn decode_request_survives_random_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            fuzz_decode_request(&bytes);
        }

        #[test]
        fn decode_request_survives_mutated_frames(
            which in any::<prop::sample::Index>(),
            edits in edits(),
        ) {
            let corpus = request_corpus();
            fuzz_decode_request(&mutate(which.get(&corpus).clone(), &edits));
        }

        #[test]
        fn decode_response_survives_random_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            fuzz_decode_response(&bytes);
        }

        #[test]
        fn decode_response_survives_mutated_frames(
            which in any::<prop::sample::Index>(),
            edits in edits(),
        ) {
            let corpus = response_corpus();
            fuzz_decode_response(&mutate(which.get(&corpus).clone(), &edits));
        }
    }
}
