//! One pipelined connection of [`Client`](super::Client), on glommio.
//!
//! A caller takes an in-flight slot (at most `in_flight_request_count_max` per
//! connection), registers its correlation id as pending, encodes its frame into the
//! outgoing buffer and wakes the writer task, which hands everything queued to the socket
//! in one write. The reader task decodes each response as it arrives, in whatever order
//! the server sends them, copies it out of the frame ([`Reply`]) and completes the pending
//! entry with that correlation id. Nothing here holds a `RefCell` borrow across an await.
//!
//! When the connection fails (end of stream, an I/O error, bytes that are not frames) every
//! pending request completes with [`ClientError::Closed`] at once, and new ones are refused;
//! the client then opens a new connection for the next request. Dropping a [`Connection`]
//! cancels both tasks, which closes the socket.
//!
//! Memory is bounded by the slots: at most that many pending entries, and at most that many
//! frames queued for the socket; the reader holds one partial frame (under the frame limit)
//! plus one read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::Task;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use cairn_wire::{Encoder, FrameReader, Request, decode_response, write_frame};

use super::reply::Reply;
use super::{ClientConfig, ClientError, ConnectionLoss};

/// Bytes asked of the socket per read.
const READ_SIZE_BYTES: usize = 64 * 1024;

/// Capacity the writer's send buffer keeps between bursts. A burst of large appends may grow
/// it further (the slots bound how far); it shrinks back afterwards.
const SEND_BUFFER_CAPACITY_KEPT_BYTES_MAX: usize = 1024 * 1024;

/// An open connection, owned by the client's connection map. Dropping it fails whatever is
/// still pending and cancels its reader and writer tasks.
pub(super) struct Connection {
    shared: Rc<ConnectionShared>,
    _reader: Task<()>,
    _writer: Task<()>,
}

impl Connection {
    /// Connects to `address` and starts the reader and writer tasks on the current
    /// executor.
    pub(super) async fn open(
        address: SocketAddr,
        config: &ClientConfig,
    ) -> Result<Connection, ClientError> {
        let connect_error = |source: std::io::Error| ClientError::Connect { address, source };
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| connect_error(error.into()))?;
        // Requests are small and pipelined, and the writer batches frames itself: Nagle's
        // algorithm would only hold them back waiting for acknowledgements.
        stream
            .set_nodelay(true)
            .map_err(|error| connect_error(error.into()))?;
        let (read_half, write_half) = futures_lite::io::split(stream);
        // One pending wake-up is enough: the writer sends everything queued when it wakes.
        let (writer_wake, writer_wake_receiver) = local_channel::new_bounded(1);
        let slot_count = u64::from(config.in_flight_request_count_max);
        let shared = Rc::new(ConnectionShared {
            address,
            frame_size_bytes_max: config.frame_size_bytes_max,
            in_flight: Semaphore::new(slot_count),
            pending: RefCell::new(HashMap::new()),
            encoder: RefCell::new(Encoder::new()),
            outgoing: RefCell::new(Vec::new()),
            writer_wake,
            loss: RefCell::new(None),
        });
        let reader = glommio::spawn_local(read_responses(Rc::clone(&shared), read_half));
        let writer = glommio::spawn_local(write_requests(
            Rc::clone(&shared),
            write_half,
            writer_wake_receiver,
        ));
        Ok(Connection {
            shared,
            _reader: reader,
            _writer: writer,
        })
    }

    /// The state callers share with the tasks.
    pub(super) fn shared(&self) -> Rc<ConnectionShared> {
        Rc::clone(&self.shared)
    }

    /// True once the connection has failed; a new one must replace it.
    pub(super) fn is_lost(&self) -> bool {
        self.shared.loss.borrow().is_some()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Before the tasks are cancelled (the fields drop after this), so no caller is left
        // waiting for a reader that no longer exists.
        self.shared.fail(ConnectionLoss::Dropped);
    }
}

/// What callers, the reader and the writer of one connection share.
pub(super) struct ConnectionShared {
    address: SocketAddr,
    frame_size_bytes_max: u32,
    /// One unit per request between taking a slot and getting its response.
    in_flight: Semaphore,
    /// Requests sent (or about to be) and not yet claimed by their caller, by correlation id.
    pending: RefCell<HashMap<u64, Pending>>,
    encoder: RefCell<Encoder>,
    /// Frames encoded and not yet taken by the writer.
    outgoing: RefCell<Vec<u8>>,
    writer_wake: LocalSender<()>,
    /// Why the connection failed, once it has.
    loss: RefCell<Option<ConnectionLoss>>,
}

/// A pending request's state.
enum Pending {
    /// No response yet; the waker of the caller's last poll.
    Waiting(Option<Waker>),
    /// The response (or the connection's failure), not yet claimed by the caller.
    Done(Result<Reply, ClientError>),
}

impl ConnectionShared {
    /// Sends `request` and waits for its response. Without a timeout: the caller bounds the
    /// wait, and dropping this future forgets the request (a late response is discarded).
    pub(super) async fn exchange(&self, request: &Request<'_>) -> Result<Reply, ClientError> {
        let _slot = self
            .in_flight
            .acquire_permit(1)
            .await
            .map_err(|_closed| self.closed_error())?;
        if self.loss.borrow().is_some() {
            return Err(self.closed_error());
        }
        {
            let mut encoder = self.encoder.borrow_mut();
            let frame = encoder.encode_request(request);
            if frame.len() > usize::try_from(self.frame_size_bytes_max).unwrap_or(usize::MAX) {
                return Err(ClientError::RequestTooLarge {
                    frame_size_bytes: frame.len(),
                    frame_size_bytes_max: self.frame_size_bytes_max,
                });
            }
            write_frame(frame, &mut *self.outgoing.borrow_mut());
        }
        let response = ResponseWaiter::register(self, request.correlation_id);
        // Full means a wake-up is already queued and the writer will take this frame too;
        // closed means the writer is gone, and the connection with it, which has failed (or
        // will fail) this request.
        let _ = self.writer_wake.try_send(());
        response.await
    }

    /// Completes the pending request `correlation_id`, if its caller still waits.
    fn complete(&self, correlation_id: u64, result: Result<Reply, ClientError>) {
        let waker = {
            let mut pending = self.pending.borrow_mut();
            let Some(entry) = pending.get_mut(&correlation_id) else {
                // Its caller timed out or went away; nobody wants this answer.
                tracing::debug!(address = %self.address, correlation_id, "discarding a response");
                return;
            };
            if let Pending::Done(_) = entry {
                tracing::warn!(
                    address = %self.address,
                    correlation_id,
                    "the server answered a request twice; keeping the first answer",
                );
                return;
            }
            match std::mem::replace(entry, Pending::Done(result)) {
                Pending::Waiting(waker) => waker,
                Pending::Done(_) => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Marks the connection failed (the first cause wins) and fails every pending request.
    fn fail(&self, loss: ConnectionLoss) {
        if self.loss.borrow().is_some() {
            return;
        }
        *self.loss.borrow_mut() = Some(loss);
        self.in_flight.close();
        let wakers: Vec<Waker> = {
            let mut pending = self.pending.borrow_mut();
            pending
                .values_mut()
                .filter_map(|entry| {
                    let Pending::Waiting(waker) = entry else {
                        return None;
                    };
                    let waker = waker.take();
                    *entry = Pending::Done(Err(self.closed_error()));
                    waker
                })
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed {
            address: self.address,
            cause: self
                .loss
                .borrow()
                .clone()
                .unwrap_or(ConnectionLoss::Dropped),
        }
    }
}

/// Waits for one pending request's response; dropping it forgets the request.
struct ResponseWaiter<'a> {
    connection: &'a ConnectionShared,
    correlation_id: u64,
}

impl<'a> ResponseWaiter<'a> {
    fn register(connection: &'a ConnectionShared, correlation_id: u64) -> ResponseWaiter<'a> {
        let previous = connection
            .pending
            .borrow_mut()
            .insert(correlation_id, Pending::Waiting(None));
        assert!(
            previous.is_none(),
            "correlation id {correlation_id} is pending twice; ids come from a 64-bit counter",
        );
        ResponseWaiter {
            connection,
            correlation_id,
        }
    }
}

impl Future for ResponseWaiter<'_> {
    type Output = Result<Reply, ClientError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = self.connection.pending.borrow_mut();
        match pending.remove(&self.correlation_id) {
            Some(Pending::Done(result)) => Poll::Ready(result),
            Some(Pending::Waiting(_)) => {
                let waiting = Pending::Waiting(Some(context.waker().clone()));
                pending.insert(self.correlation_id, waiting);
                Poll::Pending
            }
            // Only a finished waiter's entry is gone, and finished futures are not polled.
            None => {
                drop(pending);
                Poll::Ready(Err(self.connection.closed_error()))
            }
        }
    }
}

impl Drop for ResponseWaiter<'_> {
    fn drop(&mut self) {
        self.connection
            .pending
            .borrow_mut()
            .remove(&self.correlation_id);
    }
}

/// The reader task: responses to pending requests until the connection fails.
async fn read_responses(shared: Rc<ConnectionShared>, mut read_half: ReadHalf<TcpStream>) {
    let loss = read_until_lost(&shared, &mut read_half).await;
    tracing::debug!(address = %shared.address, %loss, "connection lost");
    shared.fail(loss);
}

async fn read_until_lost(
    shared: &ConnectionShared,
    read_half: &mut ReadHalf<TcpStream>,
) -> ConnectionLoss {
    let mut frames = FrameReader::new(shared.frame_size_bytes_max);
    let mut buffer = vec![0_u8; READ_SIZE_BYTES];
    loop {
        let read_size_bytes = match read_half.read(&mut buffer).await {
            Ok(0) => {
                return match frames.finish() {
                    Ok(()) => ConnectionLoss::EndOfStream,
                    Err(error) => ConnectionLoss::Frame(error),
                };
            }
            Ok(read_size_bytes) => read_size_bytes,
            Err(error) => return ConnectionLoss::Read(error.kind()),
        };
        frames.feed(&buffer[..read_size_bytes]);
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return ConnectionLoss::Frame(error),
            };
            match decode_response(&frame) {
                Ok(response) => {
                    let reply = Reply::from_body(response.body);
                    shared.complete(response.correlation_id, Ok(reply));
                }
                // A valid flatbuffer that breaks a rule (say, an error code from a newer
                // server) fails only its own request; the stream is still in step.
                Err(error) => match error.correlation_id() {
                    Some(correlation_id) => {
                        shared.complete(correlation_id, Err(error.into()));
                    }
                    None => return ConnectionLoss::Wire(Box::new(error)),
                },
            }
        }
    }
}

/// The writer task: sends queued frames, all at once, each time a caller wakes it.
async fn write_requests(
    shared: Rc<ConnectionShared>,
    mut write_half: WriteHalf<TcpStream>,
    wake: LocalReceiver<()>,
) {
    let mut sending = Vec::new();
    // The sender lives in `shared`, which this task holds, so `recv` never ends the loop:
    // the task ends on a write error or when the connection is dropped.
    while wake.recv().await.is_some() {
        std::mem::swap(&mut *shared.outgoing.borrow_mut(), &mut sending);
        if sending.is_empty() {
            continue;
        }
        let written = match write_half.write_all(&sending).await {
            Ok(()) => write_half.flush().await,
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::debug!(address = %shared.address, %error, "write failed");
            shared.fail(ConnectionLoss::Write(error.kind()));
            return;
        }
        sending.clear();
        sending.shrink_to(SEND_BUFFER_CAPACITY_KEPT_BYTES_MAX);
    }
}
