//! One Kafka client connection: size-prefixed requests in, responses out, one request at
//! a time, as Kafka brokers do (so responses leave in request order, and a connection
//! holds at most one request's memory).
//!
//! A frame is a 4-byte big-endian size and that many bytes. The size is checked against
//! `frame_size_bytes_max` before anything is buffered; a frame over it (or a negative
//! size) closes the connection, since the stream cannot be resynchronised. Then the frame
//! is paid for (`admission`): from the shard's `shard_request_bytes_max` budget, except a
//! frame of at most `NON_APPEND_FRAME_SIZE_BYTES_MAX`, which a connection may always have
//! (it has no other request in flight), so that metadata and fetch requests are served
//! while producers hold the whole budget. Only then is the body read.
//!
//! The connection counts in the shard's `open_connections` like a native one: beyond
//! `shard_connection_count_max` it is closed at once (Kafka has no "overloaded" answer;
//! clients reconnect with back-off), and shutdown waits for it. When the server starts
//! shutting down, the connection stops reading, finishes the request it is handling (a
//! long-polling fetch answers at once with what is synced) and closes.
//!
//! While a request is handled the socket is not read, so a client that leaves during a
//! long-polling fetch is noticed when the fetch ends (at most `fetch_wait_max`). A response
//! write that makes no progress for `WRITE_TIMEOUT` closes the connection.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{Handled, handle_request};
use crate::context::ShardContext;
use crate::metrics::FrontEnd;
use cairn_wire::NON_APPEND_FRAME_SIZE_BYTES_MAX;

/// A response write that makes no progress for this long closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why reading the next frame ended without one.
enum ReadEnd {
    /// The client closed, or the socket failed.
    Closed,
    /// The server is shutting down.
    Stopping,
    /// The size prefix broke the framing.
    Framing(String),
}

/// Serves one accepted Kafka connection until the client closes it, sends a frame we
/// cannot answer, or the server shuts down.
pub(crate) async fn serve(context: Rc<ShardContext>, mut stream: TcpStream) {
    let open_count_max = context.config.shard_connection_count_max.max(1);
    if context.open_connections.get() >= open_count_max {
        context
            .admission
            .note_refused_connection(context.open_connections.get(), open_count_max);
        let _ = stream.close().await;
        return;
    }
    context
        .open_connections
        .set(context.open_connections.get() + 1);
    context.metrics.connection_opened(FrontEnd::Kafka);
    let peer = stream.peer_addr().ok();
    if let Err(error) = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
    {
        tracing::warn!(?peer, %error, "could not configure Kafka connection");
    }
    loop {
        let frame = match read_frame(&context, &mut stream).await {
            Ok(frame) => frame,
            Err(ReadEnd::Closed | ReadEnd::Stopping) => break,
            Err(ReadEnd::Framing(problem)) => {
                tracing::info!(
                    ?peer,
                    problem,
                    "closing Kafka connection on a framing error"
                );
                break;
            }
        };
        let (frame, _permit) = frame;
        match handle_request(&context, frame, peer).await {
            Handled::Respond(response) => {
                let written = async {
                    stream.write_all(&response).await?;
                    stream.flush().await
                };
                if let Err(error) = written.await {
                    tracing::debug!(?peer, %error, "Kafka response write failed, closing");
                    break;
                }
            }
            Handled::Silent => {}
            Handled::Close(problem) => {
                tracing::info!(?peer, problem, "closing Kafka connection on a bad request");
                break;
            }
        }
    }
    let _ = stream.close().await;
    context
        .open_connections
        .set(context.open_connections.get() - 1);
    context.metrics.connection_closed(FrontEnd::Kafka);
    context.connection_closed.notify();
}

/// Reads the next frame's body, paid for before it is buffered; the permit is held until
/// the request is answered.
async fn read_frame(
    context: &ShardContext,
    stream: &mut TcpStream,
) -> Result<(Bytes, Option<crate::admission::RequestMemoryPermit>), ReadEnd> {
    let mut size_prefix = [0u8; 4];
    until_stopping(context, stream.read_exact(&mut size_prefix))
        .await?
        .map_err(|_| ReadEnd::Closed)?;
    let size_bytes = i32::from_be_bytes(size_prefix);
    let size_bytes_max = context.config.frame_size_bytes_max;
    let Ok(size_bytes) = u32::try_from(size_bytes) else {
        return Err(ReadEnd::Framing(format!(
            "negative frame size {size_bytes}"
        )));
    };
    if size_bytes > size_bytes_max {
        return Err(ReadEnd::Framing(format!(
            "frame of {size_bytes} bytes exceeds {size_bytes_max}"
        )));
    }
    let size = usize::try_from(size_bytes).unwrap_or(usize::MAX);
    let permit = if size_bytes <= NON_APPEND_FRAME_SIZE_BYTES_MAX {
        None
    } else {
        Some(until_stopping(context, context.admission.request_memory.pay(size)).await?)
    };
    let mut body = vec![0u8; size];
    until_stopping(context, stream.read_exact(&mut body))
        .await?
        .map_err(|_| ReadEnd::Closed)?;
    Ok((Bytes::from(body), permit))
}

/// `future`'s output, or `ReadEnd::Stopping` once the server starts shutting down.
async fn until_stopping<T>(
    context: &ShardContext,
    future: impl Future<Output = T>,
) -> Result<T, ReadEnd> {
    let stopping = context.stopping.listen();
    if context.is_stopping.get() {
        return Err(ReadEnd::Stopping);
    }
    futures_lite::future::or(async { Ok(future.await) }, async {
        stopping.await;
        Err(ReadEnd::Stopping)
    })
    .await
}
