//! `ApiVersions`: the APIs and version ranges of [`super::SUPPORTED_APIS`], and the v0
//! answer to a version we do not speak.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

use super::SUPPORTED_APIS;

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|&(api_key, min, max)| {
            ApiVersion::default()
                .with_api_key(api_key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The answer to a supported ApiVersions request.
pub(super) fn serve(_version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_keys())
}

/// The v0 answer to an ApiVersions request of a version we do not speak: the client
/// picks one from the ranges and asks again.
pub(super) fn unsupported_version() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys())
}
