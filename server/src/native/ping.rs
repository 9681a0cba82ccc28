//! `Ping`: answers `Pong` while the server serves.

use cairn_wire::ResponseBody;

use super::session::Session;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve(context: &ShardContext, session: &Session, correlation_id: u64) {
    match service::ping(context) {
        Ok(()) => session.respond(correlation_id, ResponseBody::Pong).await,
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
