//! Frames: a u32 little-endian length, then that many bytes of one flatbuffer.
//!
//! [`FrameReader`] turns a byte stream, fed in whatever pieces the socket delivers, into
//! whole frames. It reads the length first and refuses one over the configured
//! `frame_size_bytes_max` before buffering any of its body, so a peer cannot make it hold
//! more than what it has actually sent of frames within the limit. It also tells the
//! length before the body ([`FrameReader::next_frame_size_bytes`]), so that a server can
//! reserve memory for a frame before buffering it. Each frame it returns owns an allocation
//! of exactly its size: holding one frame (a request being handled) never keeps the bytes
//! of another alive, so what a caller holds is the sum of the frames it holds.
//! [`write_frame`] is the other direction.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length that precedes every frame.
pub const FRAME_LENGTH_SIZE_BYTES: usize = 4;

/// Why a byte stream could not be split into frames. Either way the stream cannot be
/// resynchronised: the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame announced a length over the limit. Nothing of it was buffered.
    #[error("frame length {len_bytes} exceeds {len_bytes_max}")]
    TooLarge { len_bytes: u32, len_bytes_max: u32 },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {buffered_size_bytes} bytes of {frame_size_bytes}")]
    Truncated {
        buffered_size_bytes: usize,
        frame_size_bytes: usize,
    },
}

/// Splits a byte stream into frames, without I/O: feed it bytes, take frames out.
///
/// Memory: the reader holds the bytes fed and not yet returned as frames: the body received
/// so far of the frame whose length is known (its allocation grows with what arrives, at
/// most to twice that and never beyond the announced length), and the rest of what was fed
/// last. A caller that takes every available frame after each [`feed`](Self::feed) holds at
/// most one partial frame plus what it fed last.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes fed and not yet moved into a frame's body: at most a length prefix, and what
    /// followed it in the last feed.
    buffer: BytesMut,
    /// The frame whose length prefix has been taken from `buffer`.
    frame: Option<PartialFrame>,
    frame_size_bytes_max: u32,
}

/// A frame whose length is known, and the part of its body received so far.
#[derive(Debug)]
struct PartialFrame {
    frame_size_bytes: usize,
    body: Vec<u8>,
}

impl FrameReader {
    /// A reader that refuses frames longer than `frame_size_bytes_max` (the flatbuffer's
    /// bytes, not counting the 4-byte length).
    #[must_use]
    pub fn new(frame_size_bytes_max: u32) -> FrameReader {
        FrameReader {
            buffer: BytesMut::new(),
            frame: None,
            frame_size_bytes_max,
        }
    }

    /// Appends bytes received from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The length of the next frame (without its 4-byte prefix) as soon as its prefix has
    /// arrived, before its body is buffered; `Ok(None)` if the prefix is incomplete, or an
    /// error if the length is over the limit. The same until that frame is returned by
    /// [`next_frame`](Self::next_frame). After an error, every call returns the same error.
    pub fn next_frame_size_bytes(&mut self) -> Result<Option<u32>, FrameError> {
        if let Some(frame) = &self.frame {
            let len_bytes = u32::try_from(frame.frame_size_bytes)
                .expect("a frame's length was read from a u32");
            return Ok(Some(len_bytes));
        }
        let Some(len_bytes) = self.next_len_bytes()? else {
            return Ok(None);
        };
        self.buffer.advance(FRAME_LENGTH_SIZE_BYTES);
        // The limit is at most u32::MAX, so the frame fits in memory's address space.
        let frame_size_bytes = usize::try_from(len_bytes).expect("usize holds a u32");
        // No reserve for the whole body here: memory follows the bytes that actually
        // arrive, not what a peer announced.
        self.frame = Some(PartialFrame {
            frame_size_bytes,
            body: Vec::new(),
        });
        Ok(Some(len_bytes))
    }

    /// The next whole frame's flatbuffer (without its length), `Ok(None)` if more bytes are
    /// needed, or an error if the next frame is over the limit. After an error, every call
    /// returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.next_frame_size_bytes()?.is_none() {
            return Ok(None);
        }
        let frame = self
            .frame
            .as_mut()
            .expect("next_frame_size_bytes took the length of a frame");
        let missing_size_bytes = frame.frame_size_bytes - frame.body.len();
        let moved_size_bytes = missing_size_bytes.min(self.buffer.len());
        let needed_size_bytes = frame.body.len() + moved_size_bytes;
        if needed_size_bytes > frame.body.capacity() {
            // Double as bytes arrive (so copying stays linear in the frame's size), but
            // never past the frame's length: a complete body's allocation is exact.
            let capacity = needed_size_bytes
                .max(frame.body.capacity().saturating_mul(2))
                .min(frame.frame_size_bytes);
            frame.body.reserve_exact(capacity - frame.body.len());
        }
        frame
            .body
            .extend_from_slice(self.buffer.get(..moved_size_bytes).unwrap_or_default());
        self.buffer.advance(moved_size_bytes);
        if frame.body.len() < frame.frame_size_bytes {
            return Ok(None);
        }
        let frame = self.frame.take().expect("a frame is being received");
        Ok(Some(Bytes::from(frame.body)))
    }

    /// Checks that the stream ended between frames: call it at end of stream.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(frame) = &self.frame {
            return Err(FrameError::Truncated {
                buffered_size_bytes: self.buffered_size_bytes(),
                frame_size_bytes: FRAME_LENGTH_SIZE_BYTES + frame.frame_size_bytes,
            });
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let frame_size_bytes = match self.next_len_bytes() {
            Ok(Some(len_bytes)) => {
                let len_bytes = usize::try_from(len_bytes).expect("usize holds a u32");
                FRAME_LENGTH_SIZE_BYTES + len_bytes
            }
            Ok(None) => FRAME_LENGTH_SIZE_BYTES,
            Err(error) => return Err(error),
        };
        Err(FrameError::Truncated {
            buffered_size_bytes: self.buffer.len(),
            frame_size_bytes,
        })
    }

    /// Bytes fed and not yet returned in a frame, length prefixes included.
    #[must_use]
    pub fn buffered_size_bytes(&self) -> usize {
        let frame_size_bytes = self
            .frame
            .as_ref()
            .map_or(0, |frame| FRAME_LENGTH_SIZE_BYTES + frame.body.len());
        frame_size_bytes + self.buffer.len()
    }

    /// The limit this reader enforces.
    #[must_use]
    pub fn frame_size_bytes_max(&self) -> u32 {
        self.frame_size_bytes_max
    }

    /// The next frame's length, once its 4 bytes are buffered, checked against the limit.
    fn next_len_bytes(&self) -> Result<Option<u32>, FrameError> {
        let Some(prefix) = self.buffer.first_chunk::<FRAME_LENGTH_SIZE_BYTES>() else {
            return Ok(None);
        };
        let len_bytes = u32::from_le_bytes(*prefix);
        if len_bytes > self.frame_size_bytes_max {
            return Err(FrameError::TooLarge {
                len_bytes,
                len_bytes_max: self.frame_size_bytes_max,
            });
        }
        Ok(Some(len_bytes))
    }
}

/// Appends one frame holding `payload` to `out`: its length as a u32 little-endian, then
/// the payload.
///
/// # Panics
///
/// If `payload` is 4 GiB or longer; flatbuffers never are (their builder stops at 2 GiB).
pub fn write_frame(payload: &[u8], out: &mut impl BufMut) {
    let len_bytes = u32::try_from(payload.len()).expect("a flatbuffer is shorter than 2 GiB");
    out.put_u32_le(len_bytes);
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut stream = Vec::new();
        for payload in payloads {
            write_frame(payload, &mut stream);
        }
        stream
    }

    fn drain(reader: &mut FrameReader, frames: &mut Vec<Vec<u8>>) {
        while let Some(frame) = reader.next_frame().unwrap() {
            frames.push(frame.to_vec());
        }
    }

    #[test]
    fn write_frame_prefixes_the_little_endian_length() {
        let mut out = Vec::new();
        write_frame(b"abc", &mut out);
        assert_eq!(out, [3, 0, 0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn frames_fed_one_byte_at_a_time_come_out_whole() {
        let payloads: [&[u8]; 4] = [b"first", b"", b"third frame", &[0xff; 300]];
        let stream = framed(&payloads);
        let mut reader = FrameReader::new(1024);
        let mut frames = Vec::new();
        for byte in &stream {
            reader.feed(std::slice::from_ref(byte));
            drain(&mut reader, &mut frames);
        }
        let expected: Vec<Vec<u8>> = payloads.iter().map(|payload| payload.to_vec()).collect();
        assert_eq!(frames, expected);
        assert_eq!(reader.buffered_size_bytes(), 0);
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn oversized_length_is_refused_before_its_body_arrives() {
        let mut reader = FrameReader::new(1024);
        reader.feed(&1025_u32.to_le_bytes());
        let expected = FrameError::TooLarge {
            len_bytes: 1025,
            len_bytes_max: 1024,
        };
        assert_eq!(reader.next_frame(), Err(expected));
        // Sticky: the stream cannot be resynchronised.
        reader.feed(&[0; 16]);
        assert_eq!(reader.next_frame(), Err(expected));
        assert_eq!(reader.finish(), Err(expected));
    }

    #[test]
    fn absurd_length_does_not_allocate() {
        let mut reader = FrameReader::new(u32::MAX);
        reader.feed(&u32::MAX.to_le_bytes());
        reader.feed(b"a few bytes");
        assert_eq!(reader.next_frame(), Ok(None));
        // Only what was fed is held, not the 4 GiB announced.
        let body_capacity = reader
            .frame
            .as_ref()
            .map_or(0, |frame| frame.body.capacity());
        assert!(body_capacity < 1024, "capacity {body_capacity}");
        assert!(reader.buffer.capacity() < 1024);
    }

    #[test]
    fn the_length_is_known_before_the_body_arrives() {
        let mut reader = FrameReader::new(1024);
        let stream = framed(&[b"hello", b"world!"]);
        reader.feed(&stream[..3]);
        assert_eq!(reader.next_frame_size_bytes(), Ok(None));
        reader.feed(&stream[3..4]);
        assert_eq!(reader.next_frame_size_bytes(), Ok(Some(5)));
        assert_eq!(reader.next_frame_size_bytes(), Ok(Some(5)));
        assert_eq!(reader.next_frame(), Ok(None));
        reader.feed(&stream[4..]);
        assert_eq!(reader.next_frame().unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(reader.next_frame_size_bytes(), Ok(Some(6)));
        assert_eq!(reader.buffered_size_bytes(), 10);
        assert_eq!(
            reader.next_frame().unwrap().as_deref(),
            Some(&b"world!"[..])
        );
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn each_frame_owns_an_exact_allocation() {
        // A frame built from many small feeds, and small frames that arrived together with
        // part of a large one: each comes out in an allocation of its own size, so holding
        // a small frame keeps nothing of a large one alive.
        let large = vec![7u8; 100_000];
        let stream = framed(&[b"small", &large, b"tail"]);
        let mut reader = FrameReader::new(1 << 20);
        let mut frames = Vec::new();
        for piece in stream.chunks(4096) {
            reader.feed(piece);
            while let Some(frame) = reader.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 3);
        for frame in frames {
            // Unique: no other frame and not the reader's buffer shares its allocation
            // (converting a unique `Bytes` back into a `Vec` reuses that allocation).
            assert!(
                frame.is_unique(),
                "a frame of {} bytes is shared",
                frame.len()
            );
            let body: Vec<u8> = frame.into();
            assert_eq!(body.capacity(), body.len());
        }
    }

    #[test]
    fn length_at_the_limit_is_accepted() {
        let mut reader = FrameReader::new(3);
        reader.feed(&framed(&[b"abc"]));
        assert_eq!(reader.next_frame().unwrap().as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let mut reader = FrameReader::new(1024);
        let stream = framed(&[b"hello"]);
        reader.feed(&stream[..6]);
        assert_eq!(reader.next_frame(), Ok(None));
        let expected = FrameError::Truncated {
            buffered_size_bytes: 6,
            frame_size_bytes: 9,
        };
        assert_eq!(reader.finish(), Err(expected));

        let mut reader = FrameReader::new(1024);
        reader.feed(&stream[..2]);
        assert_eq!(reader.next_frame(), Ok(None));
        let expected = FrameError::Truncated {
            buffered_size_bytes: 2,
            frame_size_bytes: 4,
        };
        assert_eq!(reader.finish(), Err(expected));
    }

    proptest! {
        #[test]
        fn frames_survive_any_split_of_the_stream(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let stream = framed(&slices);
            let mut cut_positions: Vec<usize> =
                cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
            cut_positions.push(stream.len());
            cut_positions.sort_unstable();

            let mut reader = FrameReader::new(200);
            let mut frames = Vec::new();
            let mut start = 0;
            for end in cut_positions {
                reader.feed(&stream[start..end]);
                start = end;
                drain(&mut reader, &mut frames);
            }
            prop_assert_eq!(frames, payloads);
            prop_assert_eq!(reader.finish(), Ok(()));
        }
    }
}
