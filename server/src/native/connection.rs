//! One client connection: length-prefixed frames in, responses out, pipelined.
//!
//! The reader splits the byte stream into frames (`wire::FrameReader`, which refuses a
//! frame over `frame_size_bytes_max` before buffering it) and starts a task per request.
//! Responses go out in completion order — each carries its correlation id — and the writer
//! batches all that are ready into one socket write.
//!
//! Request memory is paid for before it is held (`admission`). As soon as a frame's length
//! is known, and before its body is buffered, the connection takes for it: one of
//! `connection_request_count_max` in-flight slots, and its size (plus
//! `REQUEST_STATE_SIZE_BYTES`) from the connection's `CONNECTION_REQUEST_BYTES_MAX` and
//! from the shard's `shard_request_bytes_max`, all given back when the request has been
//! answered. While it cannot, the connection is not read, so back-pressure reaches the
//! client through TCP. One exception: a connection with no request in flight may always
//! have one frame of at most `NON_APPEND_FRAME_SIZE_BYTES_MAX` (every kind but append)
//! without the shard's budget, so that clients that send one request at a time are served
//! even while others hold the whole budget. So requests hold at most
//! `shard_request_bytes_max` per shard, plus one small frame per connection; beyond that,
//! each connection holds its read buffer and at most one read of bytes not yet paid for
//! (`READ_CHUNK_BYTES` each), and the shard serves at most `shard_connection_count_max`
//! connections (others are told `Overloaded` and closed).
//!
//! Responses are bounded per connection (`session`): about `RESPONSE_QUEUE_BYTES_MAX`
//! encoded into the write buffer (a handler waits for room), and at most
//! `LARGE_RESPONSE_COUNT_MAX` responses that carry records (fetch, read_key, key_history:
//! up to ~2 MiB each) being built.
//! A client that never reads its responses therefore stalls only itself, and a write that
//! makes no progress for `WRITE_TIMEOUT` closes the connection.
//!
//! When the client stops sending (end of stream, or a read error), fetches of this
//! connection that wait for records answer at once with what there is, so that a client
//! that left does not keep their memory for the rest of a long poll. (A fetch forwarded to
//! another shard waits out its time there.) Once a response cannot be written (the client
//! vanished, or stalled past the timeout), the connection is abandoned: it stops reading,
//! requests not yet handled are dropped, and requests waiting to build a response with
//! records give up, so that the work a vanished client queued (up to
//! `connection_request_count_max` fetches of megabytes) is not done for nobody while the
//! shard's other clients wait.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_engine::io::event::Event;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};

use super::handle_frame;
use super::session::{Session, connection_refused_frame};
use crate::admission::{RequestMemory, RequestMemoryPermit};
use crate::context::ShardContext;
use crate::metrics::FrontEnd;
use cairn_wire::{ErrorCode, FrameError, FrameReader, NON_APPEND_FRAME_SIZE_BYTES_MAX};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A response write that makes no progress for this long closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a refused connection gets to take its `Overloaded` answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes of requests one connection holds at once (frames and
/// `REQUEST_STATE_SIZE_BYTES` each), so that one connection cannot take its shard's whole
/// budget: two of the largest default frames, so a producer can pipeline full batches. (A
/// frame over it, possible with a raised `frame_size_bytes_max`, pays all of it.)
const CONNECTION_REQUEST_BYTES_MAX: usize = 2 * cairn_wire::FRAME_SIZE_BYTES_MAX_DEFAULT as usize;

/// Bytes each request is charged beyond its frame, for what its task holds until it is
/// answered (the task and its future's state, the listeners it waits with). Measured in a
/// debug build: 8,192 long-polling fetches of 128-byte frames grew the server by 12 MiB,
/// ~1.5 KiB each, frames included; rounded up.
const REQUEST_STATE_SIZE_BYTES: usize = 2 * 1024;

/// This connection's requests being handled, and an event when one ends.
#[derive(Default)]
struct InFlight {
    count: Cell<usize>,
    ended: Event,
}

impl InFlight {
    fn start(&self) {
        self.count.set(self.count.get() + 1);
    }

    fn end(&self) {
        self.count.set(self.count.get() - 1);
        self.ended.notify();
    }

    /// Completes once no request is in flight.
    async fn idle(&self) {
        loop {
            let listener = self.ended.listen();
            if self.count.get() == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// What a request holds from when its length is known until it is answered.
struct Admitted {
    _slot: StaticPermit,
    _connection_memory: RequestMemoryPermit,
    /// `None` for the one small frame of an idle connection (see the module docs).
    _shard_memory: Option<RequestMemoryPermit>,
}

/// Takes what a request frame of `frame_size_bytes` needs before its body is buffered;
/// `None` if the connection's slots were closed.
async fn admit(
    context: &ShardContext,
    slots: &Rc<Semaphore>,
    connection_memory: &RequestMemory,
    in_flight: &InFlight,
    frame_size_bytes: u32,
) -> Option<Admitted> {
    let charge_bytes = usize::try_from(frame_size_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(REQUEST_STATE_SIZE_BYTES);
    let slot = slots.acquire_static_permit(1).await.ok()?;
    let connection_memory = connection_memory.pay(charge_bytes).await;
    let small = frame_size_bytes <= NON_APPEND_FRAME_SIZE_BYTES_MAX;
    let shard_memory = if small && in_flight.count.get() == 0 {
        None
    } else {
        let shard_budget = async { Some(context.admission.request_memory.pay(charge_bytes).await) };
        // Dropping the shard's payment when the connection falls idle takes it out of the
        // queue, with no trace.
        let idle_exemption = async {
            if !small {
                std::future::pending::<()>().await;
            }
            in_flight.idle().await;
            None
        };
        futures_lite::future::or(shard_budget, idle_exemption).await
    };
    Some(Admitted {
        _slot: slot,
        _connection_memory: connection_memory,
        _shard_memory: shard_memory,
    })
}

/// Serves one accepted connection until the client closes it, it breaks the framing, or
/// the server shuts down (then in-flight requests are answered before closing). Over the
/// shard's connection limit, answers `Overloaded` and closes instead.
pub(crate) async fn serve(context: Rc<ShardContext>, stream: TcpStream) {
    let open_count_max = context.config.shard_connection_count_max.max(1);
    if context.open_connections.get() >= open_count_max {
        refuse(&context, stream, open_count_max).await;
        return;
    }
    context
        .open_connections
        .set(context.open_connections.get() + 1);
    context.metrics.connection_opened(FrontEnd::Native);
    let peer = stream.peer_addr().ok();
    if let Err(error) = configure(&stream) {
        tracing::warn!(?peer, %error, "could not configure connection");
    }
    let (mut reader, writer) = futures_lite::io::split(stream);
    let request_count_max = context.config.connection_request_count_max.max(1);
    let session = Rc::new(Session::new());
    let slots = Rc::new(Semaphore::new(request_count_max as u64));
    let connection_memory = RequestMemory::new(CONNECTION_REQUEST_BYTES_MAX);
    let in_flight = Rc::new(InFlight::default());
    let mut frames = FrameReader::new(context.config.frame_size_bytes_max);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    // Raised by a request task whose frame was not a flatbuffer, or by the writer when
    // responses can no longer be delivered: stop reading, close.
    let broken = Event::new();
    let is_broken = Rc::new(Cell::new(false));
    // Raised by the writer only: nobody will read what is still to be answered.
    let abandoned = Rc::new(Cell::new(false));
    let writer_task = glommio::spawn_local(write_responses(
        context.clone(),
        writer,
        Abandon {
            abandoned: abandoned.clone(),
            session: session.clone(),
            broken: broken.clone(),
            is_broken: is_broken.clone(),
        },
    ));
    // What the frame being received holds, from when its length is known.
    let mut admitted: Option<Admitted> = None;
    // When the last read returned: the frames it completed were received then.
    let mut read_at = Instant::now();

    'reading: loop {
        // Take every frame that the bytes fed so far complete, each admitted before its
        // body is buffered.
        loop {
            let frame_size_bytes = match frames.next_frame_size_bytes() {
                Ok(Some(frame_size_bytes)) => frame_size_bytes,
                Ok(None) => break,
                Err(error) => {
                    // The stream cannot be resynchronised after a bad length: say why,
                    // then close this connection only.
                    tracing::info!(?peer, %error, "closing connection on a framing error");
                    respond_framing_error(&session, &error).await;
                    break 'reading;
                }
            };
            if admitted.is_none() {
                let stopping = futures_lite::future::or(context.stopping.listen(), broken.listen());
                if context.is_stopping.get() || is_broken.get() {
                    break 'reading;
                }
                let admission = admit(
                    &context,
                    &slots,
                    &connection_memory,
                    &in_flight,
                    frame_size_bytes,
                );
                let admission = futures_lite::future::or(admission, async {
                    stopping.await;
                    None
                });
                match admission.await {
                    Some(admission) => admitted = Some(admission),
                    None => break 'reading,
                }
            }
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                // Not after its length was accepted; handled like any framing error.
                Err(error) => {
                    respond_framing_error(&session, &error).await;
                    break 'reading;
                }
            };
            if is_broken.get() {
                break 'reading;
            }
            let admitted = admitted
                .take()
                .expect("every frame is admitted before its body is buffered");
            in_flight.start();
            let context = context.clone();
            let session = session.clone();
            let broken = broken.clone();
            let is_broken = is_broken.clone();
            let abandoned = abandoned.clone();
            let in_flight = in_flight.clone();
            glommio::spawn_local(async move {
                if !abandoned.get() && handle_frame(&context, &frame, &session, read_at).await {
                    is_broken.set(true);
                    broken.notify();
                }
                // The request is answered (or abandoned): give back what it held.
                drop(frame);
                drop(admitted);
                in_flight.end();
            })
            .detach();
        }

        let stopping = futures_lite::future::or(context.stopping.listen(), broken.listen());
        if context.is_stopping.get() || is_broken.get() {
            break;
        }
        let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
            stopping.await;
            None
        })
        .await;
        let read_bytes = match read {
            None => break,
            Some(Ok(0)) => {
                session.hang_up();
                break;
            }
            Some(Ok(read_bytes)) => read_bytes,
            Some(Err(error)) => {
                tracing::debug!(?peer, %error, "read failed, closing");
                session.hang_up();
                break;
            }
        };
        read_at = Instant::now();
        frames.feed(chunk.get(..read_bytes).unwrap_or_default());
        // A socket that always has bytes never makes this loop wait: let the shard's other
        // tasks run once it has had its time slice (glommio's preempt timer).
        glommio::yield_if_needed().await;
    }
    // A frame that never came whole holds its admission until here; in-flight requests
    // hold theirs until answered.
    drop(admitted);
    if let Err(FrameError::Truncated {
        buffered_size_bytes,
        frame_size_bytes,
    }) = frames.finish()
    {
        tracing::debug!(
            ?peer,
            buffered_size_bytes,
            frame_size_bytes,
            "client left mid-frame"
        );
    }
    drop(frames);
    drop(chunk);
    // Answer what was read: wait for every in-flight request to give back its slot.
    let _ = slots.acquire(request_count_max as u64).await;
    session.close();
    writer_task.await;
    context
        .open_connections
        .set(context.open_connections.get() - 1);
    context.metrics.connection_closed(FrontEnd::Native);
    context.connection_closed.notify();
}

/// The response to a frame that broke the framing (sent just before closing).
async fn respond_framing_error(session: &Session, frame_error: &FrameError) {
    let code = match frame_error {
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        FrameError::Truncated { .. } => ErrorCode::BadRequest,
    };
    session.error(0, code, &frame_error.to_string()).await;
}

/// Tells a connection over the shard's limit that it is refused, and closes it.
async fn refuse(context: &ShardContext, mut stream: TcpStream, open_count_max: usize) {
    context
        .admission
        .note_refused_connection(context.open_connections.get(), open_count_max);
    let out = connection_refused_frame(open_count_max);
    // A fresh socket's send buffer takes these few bytes at once; the timeout only bounds
    // a pathological case. Either way the connection closes.
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

fn configure(stream: &TcpStream) -> glommio::Result<(), ()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(())
}

/// What the writer raises when a response cannot be written.
struct Abandon {
    abandoned: Rc<Cell<bool>>,
    session: Rc<Session>,
    broken: Event,
    is_broken: Rc<Cell<bool>>,
}

impl Abandon {
    fn raise(&self) {
        self.abandoned.set(true);
        // Requests waiting to build a response with records get an error instead.
        self.session.abandon_large_responses();
        self.is_broken.set(true);
        self.broken.notify();
    }
}

/// Writes responses as they complete, batching whatever is ready into one write. After a
/// write error it abandons the connection and keeps draining (so no handler waits forever)
/// but writes nothing more.
async fn write_responses(
    context: Rc<ShardContext>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    abandon: Abandon,
) {
    // Swapped with the session's write buffer, so both keep their capacity.
    let mut out: Vec<u8> = Vec::new();
    let mut broken = false;
    while let Some(first_encoded_at) = abandon.session.take(&mut out).await {
        if broken {
            out.clear();
            continue;
        }
        let written = async {
            writer.write_all(&out).await?;
            writer.flush().await
        };
        match written.await {
            Ok(()) => {
                if let Some(first_encoded_at) = first_encoded_at {
                    context
                        .metrics
                        .native_response_write_us
                        .observe_duration_us(first_encoded_at.elapsed());
                }
            }
            Err(error) => {
                tracing::debug!(%error, "write failed; abandoning the connection");
                broken = true;
                abandon.raise();
            }
        }
        out.clear();
    }
    let _ = writer.close().await;
}
