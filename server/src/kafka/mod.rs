//! The Kafka front end: Kafka's binary protocol over TCP, on top of the service, so that
//! any Kafka client reads and writes Cairn topics (docs/DESIGN.md, "The Kafka front end").
//!
//! Each shard is one broker: node id = shard index, its own port, leader of exactly the
//! partitions the shard owns. Metadata tells clients so, and they connect straight to the
//! owner; a Produce, Fetch or ListOffsets for another shard's partition is answered
//! NOT_LEADER_OR_FOLLOWER (the client refreshes its metadata, or, from Produce v10, goes
//! to the leader the answer names), never forwarded.
//!
//! `connection` reads one size-prefixed request at a time under the shard's budgets and
//! runs [`handle_request`] for it; that decodes the header and body with the
//! `kafka-protocol` crate (every codec is the crate's), hands the request to the module of
//! its API key, and encodes the response. A new API is a module here, a row in
//! [`SUPPORTED_APIS`] and an arm in the dispatch.
//!
//! Module order (each uses only those before it): `codes` (the error codes and the
//! message grammar of a failed condition), `record_batch` (Kafka batches <-> Cairn
//! records), `group_gate` (may a member commit: the boundary to group membership, over
//! `crate::group`), the APIs (`api_versions`, `metadata`, `create_topics`, `produce`,
//! `fetch`, `list_offsets`, `init_producer_id`, `topic_configs` (the config keys Cairn
//! takes) with `describe_configs` and `alter_configs` over it, `describe_cluster`;
//! `produce` also uses this file's `join_all`), the consumer group APIs
//! (`find_coordinator`, which also has the coordinator check the others make first, then
//! `offset_fetch`, `offset_commit`, `offset_delete` over the offsets store, and `join_group`,
//! `sync_group`, `heartbeat`, `leave_group`, `describe_groups`, `list_groups`,
//! `delete_groups` over `crate::group`), this file's dispatch, `connection`.
//!
//! Group APIs are answered by the group's coordinator shard (`routing::coordinator_shard`)
//! and NOT_COORDINATOR elsewhere, never forwarded either.

mod alter_configs;
mod api_versions;
mod codes;
pub(crate) mod connection;
mod create_topics;
mod delete_groups;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod fetch;
mod find_coordinator;
mod group_gate;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod produce;
mod record_batch;
mod sync_group;
mod topic_configs;

use std::net::SocketAddr;
use std::path::Path;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteGroupsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest,
    FindCoordinatorRequest, HeartbeatRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, ProduceRequest, RequestHeader, ResponseHeader, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::context::ShardContext;

/// The APIs this front end implements and the versions it speaks, inclusive: what
/// ApiVersions advertises, and all a connection accepts. Ranges respect KIP-896's minimums
/// (Kafka 4.0 clients send nothing older) and stop below the versions that name topics by
/// id (Produce 13, Fetch 13), which Cairn does not assign. See docs/DESIGN.md for why each.
pub(crate) const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::JoinGroup, 2, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
];

/// Whether `version` of `api_key` is one we speak.
fn is_supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED_APIS
        .iter()
        .any(|&(key, min, max)| key == api_key && (min..=max).contains(&version))
}

/// What one request frame came to.
pub(crate) enum Handled {
    /// Send this (a whole frame, size prefix included).
    Respond(Vec<u8>),
    /// Send nothing: a Produce with acks=0.
    Silent,
    /// Close the connection: the frame was not a request we can answer (unknown API key,
    /// a version we do not speak, a malformed header or body), and after it nothing in the
    /// stream can be trusted.
    Close(String),
}

/// A decoded request body, by API key.
enum Request {
    /// Its body (client software name and version) changes nothing in the answer.
    ApiVersions,
    Metadata(MetadataRequest),
    CreateTopics(CreateTopicsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    FindCoordinator(FindCoordinatorRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    OffsetDelete(OffsetDeleteRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    DescribeGroups(DescribeGroupsRequest),
    ListGroups(ListGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
}

/// Who sent a request, as group members are described (DescribeGroups).
pub(crate) struct RequestSource {
    /// The request header's client id ("" if null).
    pub(crate) client_id: String,
    /// Kafka's form, "/" and the peer's IP address.
    pub(crate) client_host: String,
}

/// A response body ready to encode.
trait ResponseBody {
    fn encode_body(&self, buf: &mut BytesMut, version: i16) -> Result<(), String>;
}

impl<T: Encodable> ResponseBody for T {
    fn encode_body(&self, buf: &mut BytesMut, version: i16) -> Result<(), String> {
        self.encode(buf, version).map_err(|error| error.to_string())
    }
}

/// Handles one request frame (without its size prefix). Never panics on its bytes: every
/// decode is the crate's checked one (its reservations bounded by the bytes there are:
/// vendor/kafka-protocol/CAIRN-PATCH.md), and a frame it refuses closes the connection.
pub(crate) async fn handle_request(
    context: &ShardContext,
    frame: Bytes,
    peer: Option<SocketAddr>,
) -> Handled {
    // The first 8 bytes of every request header version: api key, version, correlation id.
    let mut peek = frame.clone();
    if peek.remaining() < 8 {
        return Handled::Close(format!(
            "a {}-byte frame has no request header",
            frame.len()
        ));
    }
    let api_key_raw = peek.get_i16();
    context.metrics.count_kafka_request(api_key_raw);
    let version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return Handled::Close(format!("unknown API key {api_key_raw}"));
    };
    if !is_supported(api_key, version) {
        if api_key == ApiKey::ApiVersions {
            // Kafka's rule (KIP-511): a client that tried a newer ApiVersions than the
            // broker speaks gets a v0 response with UNSUPPORTED_VERSION and the ranges,
            // and retries with one of them.
            return encode_response(
                ApiKey::ApiVersions,
                0,
                correlation_id,
                &api_versions::unsupported_version(),
            );
        }
        return Handled::Close(format!("{api_key:?} v{version} is not supported"));
    }
    let mut buf = frame;
    let header_version = api_key.request_header_version(version);
    let header = match RequestHeader::decode(&mut buf, header_version) {
        Ok(header) => header,
        Err(error) => return Handled::Close(format!("malformed request header: {error}")),
    };
    let request = match decode_body(api_key, &mut buf, version) {
        Ok(request) => request,
        Err(error) => {
            return Handled::Close(format!("malformed {api_key:?} v{version} body: {error}"));
        }
    };
    let correlation_id = header.correlation_id;
    match request {
        Request::ApiVersions => {
            let response = api_versions::serve(version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::Metadata(request) => {
            let response = metadata::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::CreateTopics(request) => {
            let response = create_topics::serve(context, request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::Produce(request) => match produce::serve(context, request, version).await {
            Some(response) => encode_response(api_key, version, correlation_id, &response),
            None => Handled::Silent,
        },
        Request::Fetch(request) => {
            let response = fetch::serve(context, request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::ListOffsets(request) => {
            let response = list_offsets::serve(context, request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::InitProducerId(request) => {
            let response = init_producer_id::serve(context, &request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::DescribeConfigs(request) => {
            let response = describe_configs::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::AlterConfigs(request) => {
            let response = alter_configs::serve(context, request).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::IncrementalAlterConfigs(request) => {
            let response = alter_configs::serve_incremental(context, request).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::DescribeCluster(request) => {
            let response = describe_cluster::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::FindCoordinator(request) => {
            let response = find_coordinator::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::JoinGroup(request) => {
            let source = RequestSource {
                client_id: header
                    .client_id
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                client_host: peer.map_or_else(String::new, |peer| format!("/{}", peer.ip())),
            };
            let response = join_group::serve(context, request, version, &source).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::SyncGroup(request) => {
            let response = sync_group::serve(context, request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::Heartbeat(request) => {
            let response = heartbeat::serve(context, &request);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::LeaveGroup(request) => {
            let response = leave_group::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::DescribeGroups(request) => {
            let response = describe_groups::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::ListGroups(request) => {
            let response = list_groups::serve(context, &request, version);
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::DeleteGroups(request) => {
            let response = delete_groups::serve(context, &request).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::OffsetCommit(request) => {
            let response = offset_commit::serve(context, request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::OffsetFetch(request) => {
            let response = offset_fetch::serve(context, request, version).await;
            encode_response(api_key, version, correlation_id, &response)
        }
        Request::OffsetDelete(request) => {
            let response = offset_delete::serve(context, &request).await;
            encode_response(api_key, version, correlation_id, &response)
        }
    }
}

fn decode_body(api_key: ApiKey, buf: &mut Bytes, version: i16) -> Result<Request, String> {
    let decoded = match api_key {
        ApiKey::ApiVersions => {
            ApiVersionsRequest::decode(buf, version).map(|_| Request::ApiVersions)
        }
        ApiKey::Metadata => MetadataRequest::decode(buf, version).map(Request::Metadata),
        ApiKey::CreateTopics => {
            CreateTopicsRequest::decode(buf, version).map(Request::CreateTopics)
        }
        ApiKey::Produce => ProduceRequest::decode(buf, version).map(Request::Produce),
        ApiKey::Fetch => FetchRequest::decode(buf, version).map(Request::Fetch),
        ApiKey::ListOffsets => ListOffsetsRequest::decode(buf, version).map(Request::ListOffsets),
        ApiKey::InitProducerId => {
            InitProducerIdRequest::decode(buf, version).map(Request::InitProducerId)
        }
        ApiKey::DescribeConfigs => {
            DescribeConfigsRequest::decode(buf, version).map(Request::DescribeConfigs)
        }
        ApiKey::AlterConfigs => {
            AlterConfigsRequest::decode(buf, version).map(Request::AlterConfigs)
        }
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::decode(buf, version)
            .map(Request::IncrementalAlterConfigs),
        ApiKey::DescribeCluster => {
            DescribeClusterRequest::decode(buf, version).map(Request::DescribeCluster)
        }
        ApiKey::FindCoordinator => {
            FindCoordinatorRequest::decode(buf, version).map(Request::FindCoordinator)
        }
        ApiKey::JoinGroup => JoinGroupRequest::decode(buf, version).map(Request::JoinGroup),
        ApiKey::SyncGroup => SyncGroupRequest::decode(buf, version).map(Request::SyncGroup),
        ApiKey::Heartbeat => HeartbeatRequest::decode(buf, version).map(Request::Heartbeat),
        ApiKey::LeaveGroup => LeaveGroupRequest::decode(buf, version).map(Request::LeaveGroup),
        ApiKey::DescribeGroups => {
            DescribeGroupsRequest::decode(buf, version).map(Request::DescribeGroups)
        }
        ApiKey::ListGroups => ListGroupsRequest::decode(buf, version).map(Request::ListGroups),
        ApiKey::DeleteGroups => {
            DeleteGroupsRequest::decode(buf, version).map(Request::DeleteGroups)
        }
        ApiKey::OffsetCommit => {
            OffsetCommitRequest::decode(buf, version).map(Request::OffsetCommit)
        }
        ApiKey::OffsetFetch => OffsetFetchRequest::decode(buf, version).map(Request::OffsetFetch),
        ApiKey::OffsetDelete => {
            OffsetDeleteRequest::decode(buf, version).map(Request::OffsetDelete)
        }
        other => return Err(format!("{other:?} is not implemented")),
    };
    decoded.map_err(|error| error.to_string())
}

/// Runs `futures` concurrently on this executor; their outputs in order.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("poll_fn returned only once every future was ready"))
        .collect()
}

/// The whole response frame: size prefix, header, body.
fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &dyn ResponseBody,
) -> Handled {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // the size, filled in below
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let encoded = header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|error| error.to_string())
        .and_then(|()| body.encode_body(&mut buf, version));
    if let Err(error) = encoded {
        // Our bug (a field set that this version lacks): say so, and close rather than
        // send a response the client would misread.
        tracing::error!(?api_key, version, %error, "could not encode a Kafka response");
        return Handled::Close(format!(
            "could not encode the {api_key:?} response: {error}"
        ));
    }
    let size_bytes = buf.len() - 4;
    let Ok(size_bytes) = i32::try_from(size_bytes) else {
        return Handled::Close(format!("a {size_bytes}-byte response does not fit a frame"));
    };
    buf.get_mut(0..4)
        .expect("the size prefix was put first")
        .copy_from_slice(&size_bytes.to_be_bytes());
    Handled::Respond(buf.to_vec())
}

/// The Kafka cluster id of the data directory at `data_dir`: 16 bytes derived from the
/// modification time of its `cairn.meta` (written once, when the directory was created,
/// and never rewritten), base64url without padding like Kafka's. So it is stable across
/// restarts, differs between directories, and survives copies that keep times (`cp -a`,
/// `rsync -a`). Should the file's time be unreadable, the id still derives from the path.
pub(crate) fn cluster_id(data_dir: &Path) -> String {
    let meta_path = data_dir.join("cairn.meta");
    let modified_ns = std::fs::metadata(&meta_path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|modified| modified.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    let mut seed = modified_ns.to_le_bytes().to_vec();
    if modified_ns == 0 {
        seed.extend_from_slice(data_dir.as_os_str().as_encoded_bytes());
    }
    let mut id = [0u8; 16];
    let (first, second) = id.split_at_mut(8);
    first.copy_from_slice(&fnv1a(&seed, 0xcbf2_9ce4_8422_2325).to_le_bytes());
    second.copy_from_slice(&fnv1a(&seed, 0x6c62_272e_07bb_0142).to_le_bytes());
    base64url(&id)
}

fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    let mut bits: u32 = 0;
    let mut bit_count = 0;
    for &byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        bit_count += 8;
        while bit_count >= 6 {
            bit_count -= 6;
            out.push(char::from(ALPHABET[((bits >> bit_count) & 0x3f) as usize]));
        }
    }
    if bit_count > 0 {
        out.push(char::from(
            ALPHABET[((bits << (6 - bit_count)) & 0x3f) as usize],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = base64url(&[0u8; 16]);
        assert_eq!(id, "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(id.len(), 22);
    }

    #[test]
    fn every_advertised_version_is_one_the_crate_speaks() {
        for &(api_key, min, max) in SUPPORTED_APIS {
            let valid = api_key.valid_versions();
            assert!(min >= valid.min && max <= valid.max, "{api_key:?}");
        }
    }
}
