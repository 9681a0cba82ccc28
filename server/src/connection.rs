//! One client connection: length-prefixed frames in, responses out, pipelined.
//!
//! The reader splits the byte stream into frames (`wire::FrameReader`, which refuses a
//! frame over `frame_size_bytes_max` before buffering it) and starts a task per request;
//! at most `connection_request_count_max` are in flight, beyond which the connection is not
//! read (back-pressure reaches the client through TCP, memory stays bounded). Responses go
//! out in completion order — each carries its correlation id — and the writer batches all
//! that are ready into one socket write. A client that never reads its responses stalls
//! only itself, and a write that stalls past `WRITE_TIMEOUT` closes the connection.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use cairn_engine::io::event::Event;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use crate::handlers;
use crate::routing::ShardContext;
use crate::wire::{FrameError, FrameReader, write_frame};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A response write that makes no progress for this long closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one accepted connection until the client closes it, it breaks the framing, or
/// the server shuts down (then in-flight requests are answered before closing).
pub(crate) async fn serve(context: Rc<ShardContext>, stream: TcpStream) {
    context.open_connections.set(context.open_connections.get() + 1);
    let peer = stream.peer_addr().ok();
    if let Err(error) = configure(&stream) {
        tracing::warn!(?peer, %error, "could not configure connection");
    }
    let (mut reader, writer) = futures_lite::io::split(stream);
    let request_count_max = context.config.connection_request_count_max.max(1);
    let (response_sender, response_receiver) = local_channel::new_bounded::<Vec<u8>>(request_count_max);
    let response_sender = Rc::new(response_sender);
    let writer_task = glommio::spawn_local(write_responses(writer, response_receiver));
    let permits = Rc::new(Semaphore::new(request_count_max as u64));
    let mut frames = FrameReader::new(context.config.frame_size_bytes_max);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    // Raised by a request task whose frame was not a flatbuffer: stop reading, close.
    let broken = Event::new();
    let is_broken = Rc::new(Cell::new(false));

    'reading: loop {
        let stopping = futures_lite::future::or(context.stopping.listen(), broken.listen());
        if context.is_stopping.get() || is_broken.get() {
            break;
        }
        let read = futures_lite::future::or(reader.read(&mut chunk), async {
            stopping.await;
            Ok(0)
        })
        .await;
        let read_bytes = match read {
            Ok(0) => break,
            Ok(read_bytes) => read_bytes,
            Err(error) => {
                tracing::debug!(?peer, %error, "read failed, closing");
                break;
            }
        };
        frames.feed(chunk.get(..read_bytes).unwrap_or_default());
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    let Ok(permit) = permits.acquire_static_permit(1).await else {
                        break 'reading;
                    };
                    let context = context.clone();
                    let response_sender = response_sender.clone();
                    let broken = broken.clone();
                    let is_broken = is_broken.clone();
                    glommio::spawn_local(async move {
                        let handled = handlers::handle_frame(&context, &frame).await;
                        // The writer stops only after every sender is gone, so this waits
                        // for room instead of failing; the bounded channel is the limit.
                        let _ = response_sender.send(handled.response).await;
                        if handled.close_connection {
                            is_broken.set(true);
                            broken.notify();
                        }
                        drop(permit);
                    })
                    .detach();
                }
                Ok(None) => break,
                Err(error) => {
                    // The stream cannot be resynchronised after a bad length: say why, then
                    // close this connection only.
                    tracing::info!(?peer, %error, "closing connection on a framing error");
                    let response = handlers::framing_error_response(&error);
                    let _ = response_sender.send(response).await;
                    break 'reading;
                }
            }
        }
    }
    if let Err(FrameError::Truncated { buffered_size_bytes, frame_size_bytes }) = frames.finish() {
        tracing::debug!(?peer, buffered_size_bytes, frame_size_bytes, "client left mid-frame");
    }
    // Answer what was read: wait for every in-flight request to release its permit.
    let _ = permits.acquire(request_count_max as u64).await;
    drop(response_sender);
    writer_task.await;
    context.open_connections.set(context.open_connections.get() - 1);
    context.connection_closed.notify();
}

fn configure(stream: &TcpStream) -> glommio::Result<(), ()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(())
}

/// Writes responses as they complete, batching whatever is ready into one write. After a
/// write error it keeps draining (so no handler waits forever) but writes nothing more.
async fn write_responses(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    responses: LocalReceiver<Vec<u8>>,
) {
    let mut out: Vec<u8> = Vec::new();
    let mut broken = false;
    while let Some(response) = responses.recv().await {
        if broken {
            continue;
        }
        out.clear();
        write_frame(&response, &mut out);
        while let Some(Some(more)) = futures_lite::future::poll_once(responses.recv()).await {
            write_frame(&more, &mut out);
        }
        let written = async {
            writer.write_all(&out).await?;
            writer.flush().await
        };
        if let Err(error) = written.await {
            tracing::debug!(%error, "write failed; discarding further responses");
            broken = true;
        }
    }
    let _ = writer.close().await;
}
