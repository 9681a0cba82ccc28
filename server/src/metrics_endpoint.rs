//! The metrics and health HTTP listener (`--metrics-listen`): `GET /metrics` (the text of
//! `metrics::Metrics::encode`), `GET /health/live` (200 while the process runs) and
//! `GET /health/ready` (200 once every shard recovered and listens; 503 before, during
//! shutdown and after a storage failure).
//!
//! It runs on its own threads, never on a shard's executor: a scrape only loads the
//! shards' atomics, and a slow or hostile client can hold only its own thread. It is a
//! minimal HTTP/1.1 responder, not a web server, bounded everywhere: a request head
//! (request line and headers) of at most `REQUEST_HEAD_SIZE_BYTES_MAX` (else 431), read
//! within `REQUEST_READ_TIMEOUT` (else the connection closes), at most
//! `CONNECTION_COUNT_MAX` connections served at once (others get 503 and close), one
//! request per connection (`Connection: close`), bodies ignored. It starts before
//! recovery, so a load balancer or supervisor can tell "starting" from "dead".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::{CONTENT_TYPE, Metrics};

/// Largest request line plus headers we read; a scraper's is a few hundred bytes.
const REQUEST_HEAD_SIZE_BYTES_MAX: usize = 8 * 1024;

/// Longest a client may take to send its request head, in all.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one response write may block (a scraper that does not read).
const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; each has a thread for at most the two timeouts above.
const CONNECTION_COUNT_MAX: usize = 8;

/// Binds `address` (port 0: any free one) and serves it on a thread of its own until the
/// process exits. Returns the bound address.
pub(crate) fn start(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("cairn-metrics".into())
        .spawn(move || accept_loop(&listener, &metrics))?;
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, metrics: &Arc<Metrics>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= CONNECTION_COUNT_MAX {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(&mut stream, 503, "text/plain", b"too many connections\n");
            continue;
        }
        let metrics = metrics.clone();
        let connection_active = active.clone();
        let spawned = std::thread::Builder::new()
            .name("cairn-metrics-conn".into())
            .spawn(move || {
                serve(stream, &metrics);
                connection_active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(%error, "metrics endpoint: no thread for a connection");
        }
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Longer than `REQUEST_HEAD_SIZE_BYTES_MAX`: 431.
    TooLarge,
    /// Not `METHOD TARGET HTTP/1.x`: 400.
    Malformed,
    /// The client closed or stalled before a whole head: no answer.
    Incomplete,
}

/// The request line's method and path.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine {
    method: String,
    path: String,
}

fn serve(mut stream: TcpStream, metrics: &Arc<Metrics>) {
    let _ = stream.set_write_timeout(Some(RESPONSE_WRITE_TIMEOUT));
    let outcome = match read_head(&mut stream) {
        Ok(head) => route(&head, metrics),
        Err(HeadError::TooLarge) => (431, "text/plain", b"request header too large\n".to_vec()),
        Err(HeadError::Malformed) => (400, "text/plain", b"bad request\n".to_vec()),
        Err(HeadError::Incomplete) => return,
    };
    let (status, content_type, body) = outcome;
    let _ = respond(&mut stream, status, content_type, &body);
}

fn route(request: &RequestLine, metrics: &Arc<Metrics>) -> (u16, &'static str, Vec<u8>) {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, "text/plain", b"only GET\n".to_vec());
    }
    // A query string is ignored (some scrapers add one).
    let path = request.path.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => match metrics.encode() {
            Ok(text) => (200, CONTENT_TYPE, text.into_bytes()),
            Err(_) => (500, "text/plain", b"could not encode metrics\n".to_vec()),
        },
        "/health/live" => (200, "text/plain", b"live\n".to_vec()),
        "/health/ready" if metrics.is_ready() => (200, "text/plain", b"ready\n".to_vec()),
        "/health/ready" => (503, "text/plain", b"not ready\n".to_vec()),
        _ => (404, "text/plain", b"not found\n".to_vec()),
    }
}

/// Reads up to the blank line that ends the head, at most `REQUEST_HEAD_SIZE_BYTES_MAX`
/// bytes within `REQUEST_READ_TIMEOUT`, and parses its request line.
fn read_head(stream: &mut TcpStream) -> Result<RequestLine, HeadError> {
    let deadline = Instant::now() + REQUEST_READ_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&head) {
            return parse_request_line(head.get(..end).unwrap_or_default());
        }
        if head.len() > REQUEST_HEAD_SIZE_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Incomplete);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeadError::Incomplete),
            Ok(read) => head.extend_from_slice(chunk.get(..read).unwrap_or_default()),
        }
    }
}

/// Where the head ends (the position of its blank line), if it has.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|window| window == b"\r\n\r\n")
}

fn parse_request_line(head: &[u8]) -> Result<RequestLine, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let line = text.lines().next().ok_or(HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let token = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed);
    }
    Ok(RequestLine {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_or_are_refused() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Ok(RequestLine {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"get /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/2",
            b"GET /metrics HTTP/1.1 extra",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(
                parse_request_line(bad),
                Err(HeadError::Malformed),
                "{bad:?}"
            );
        }
    }
}
