//! WebSocket framing (RFC 6455 §5), server side: headers for the unmasked frames the server
//! sends, and a parser for the masked frames a client sends, with the protocol's rules checked
//! (masking, reserved bits, opcodes, control frames, fragmentation, UTF-8, size).
//!
//! Ours rather than a library's because a server frame's bytes are the same for every
//! recipient: with the header in our hands, the fan-out writes the shared payload behind a
//! 2–10-byte header with one vectored write, no copy and no per-connection buffer.

use crate::protocol::CloseReason;

/// Continuation frame.
const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// The header of one unmasked, final server frame.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a final frame with `opcode` and a payload of `len` bytes.
    pub fn new(opcode: u8, len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let used = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self { bytes, len: used }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A whole close frame: `code` and `reason` (at most 123 bytes, cut at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.extend_from_slice(Header::new(OP_CLOSE, 2 + reason.len()).as_bytes());
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// A text message (UTF-8 checked).
    Text(String),
    /// A binary message (its bytes are not kept: the protocol has no use for them).
    Binary,
    /// A ping, with the payload the pong must echo.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close, with its status code if it had one.
    Close(Option<u16>),
}

/// Why a client's bytes cannot be read as WebSocket frames; each maps to a close code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame or message over the node's limit (1009).
    #[error("frame or message too big")]
    TooBig,
    /// A rule of RFC 6455 broken (1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8 (1007).
    #[error("text is not UTF-8")]
    NotUtf8,
}

impl FrameError {
    /// The reason the connection closes with (1009, 1002, 1007).
    pub fn close_reason(&self) -> CloseReason {
        match self {
            Self::TooBig => CloseReason::MessageTooBig,
            Self::Protocol(_) => CloseReason::ProtocolError,
            Self::NotUtf8 => CloseReason::InvalidText,
        }
    }
}

/// Reads client frames out of the bytes received so far. Holds no allocation while idle: the
/// buffer is given back once what it held has been parsed.
#[derive(Debug, Default)]
pub struct Reader {
    /// Received bytes not parsed yet.
    buffer: Vec<u8>,
    /// A fragmented data message being put together: whether it is text, and its bytes.
    message: Option<(bool, Vec<u8>)>,
}

impl Reader {
    /// Bytes held: received and not parsed, and the part of a fragmented message read so far.
    pub fn held(&self) -> usize {
        self.buffer.len() + self.message.as_ref().map_or(0, |(_, bytes)| bytes.len())
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. `max` bounds a frame
    /// and a message; a frame over it is refused from its header, before its payload arrives.
    pub fn next(&mut self, max: usize) -> Result<Option<ClientFrame>, FrameError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame(max)? else {
                return Ok(None);
            };
            match opcode {
                OP_PING => return Ok(Some(ClientFrame::Ping(payload))),
                OP_PONG => return Ok(Some(ClientFrame::Pong)),
                OP_CLOSE => return close(&payload).map(Some),
                OP_TEXT | OP_BINARY => {
                    if self.message.is_some() {
                        return Err(FrameError::Protocol("new message inside a fragmented one"));
                    }
                    if !fin {
                        self.message = Some((opcode == OP_TEXT, payload));
                        continue;
                    }
                    return data(opcode == OP_TEXT, payload).map(Some);
                }
                OP_CONTINUATION => {
                    let Some((text, mut bytes)) = self.message.take() else {
                        return Err(FrameError::Protocol("continuation without a message"));
                    };
                    if bytes.len() + payload.len() > max {
                        return Err(FrameError::TooBig);
                    }
                    bytes.extend_from_slice(&payload);
                    if !fin {
                        self.message = Some((text, bytes));
                        continue;
                    }
                    return data(text, bytes).map(Some);
                }
                _ => return Err(FrameError::Protocol("unknown opcode")),
            }
        }
    }

    /// Takes one whole frame off the buffer, unmasked: `(fin, opcode, payload)`.
    fn frame(&mut self, max: usize) -> Result<Option<(bool, u8, Vec<u8>)>, FrameError> {
        let b = &self.buffer;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let opcode = b[0] & 0x0F;
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(FrameError::Protocol("unknown opcode"));
        }
        if b[1] & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(None),
            127 => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(eight), 10)
            }
            short => (u64::from(short), 2),
        };
        if opcode >= OP_CLOSE && (!fin || len > MAX_CONTROL as u64) {
            return Err(FrameError::Protocol("bad control frame"));
        }
        let len = match usize::try_from(len) {
            Ok(len) if len <= max => len,
            _ => return Err(FrameError::TooBig),
        };
        if b.len() < at + 4 + len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&b[at..at + 4]);
        at += 4;
        let mut payload = b[at..at + len].to_vec();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        self.buffer.drain(..at + len);
        if self.buffer.is_empty() {
            // Give the memory back: idle sessions hold none.
            self.buffer = Vec::new();
        }
        Ok(Some((fin, opcode, payload)))
    }
}

/// A complete data message.
fn data(text: bool, bytes: Vec<u8>) -> Result<ClientFrame, FrameError> {
    if !text {
        return Ok(ClientFrame::Binary);
    }
    String::from_utf8(bytes)
        .map(ClientFrame::Text)
        .map_err(|_| FrameError::NotUtf8)
}

/// A close frame's payload: empty, or a valid code and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<ClientFrame, FrameError> {
    match payload {
        [] => Ok(ClientFrame::Close(None)),
        [_] => Err(FrameError::Protocol("one-byte close payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // RFC 6455 §7.4: codes a peer may send (1004–1006 and 1015 are reserved).
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::NotUtf8);
            }
            Ok(ClientFrame::Close(Some(code)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser sends it: masked.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<ClientFrame, FrameError>> {
        let mut reader = Reader::default();
        reader.extend(bytes);
        let mut out = Vec::new();
        loop {
            match reader.next(max) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(Header::new(OP_TEXT, 5).as_bytes(), [0x81, 5]);
        assert_eq!(Header::new(OP_TEXT, 126).as_bytes(), [0x81, 126, 0, 126]);
        assert_eq!(
            Header::new(OP_TEXT, 70_000).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(
            close_frame(1000, "bye"),
            [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']
        );
        let long = "é".repeat(100);
        let frame = close_frame(1008, &long);
        assert!(frame.len() <= 2 + 125);
        assert!(
            std::str::from_utf8(&frame[4..]).is_ok(),
            "cut at a char boundary"
        );
    }

    /// RFC 6455 §5.7's examples: a single-frame masked text, and a fragmented one.
    #[test]
    fn the_rfc_examples_parse() {
        let single = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            read_all(&single, 1024),
            [Ok(ClientFrame::Text("Hello".into()))]
        );
        let mut fragmented = masked(0x01, b"Hel");
        fragmented.extend(masked(0x89, b"in between"));
        fragmented.extend(masked(0x80, b"lo"));
        assert_eq!(
            read_all(&fragmented, 1024),
            [
                Ok(ClientFrame::Ping(b"in between".to_vec())),
                Ok(ClientFrame::Text("Hello".into()))
            ]
        );
    }

    #[test]
    fn frames_arriving_byte_by_byte_parse_once_whole() {
        let bytes = masked(0x81, "x".repeat(300).as_bytes());
        let mut reader = Reader::default();
        for (i, byte) in bytes.iter().enumerate() {
            reader.extend(&[*byte]);
            let parsed = reader.next(1024).unwrap();
            assert_eq!(parsed.is_some(), i == bytes.len() - 1);
        }
        assert_eq!(reader.buffer.capacity(), 0, "the buffer is given back");
    }

    #[test]
    fn broken_rules_map_to_their_close_codes() {
        let cases: [(Vec<u8>, u16); 9] = [
            (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked
            (masked(0xC1, b"hi"), 1002),          // RSV1 without an extension
            (masked(0x83, b"hi"), 1002),          // reserved opcode
            (masked(0x09, b"hi"), 1002),          // fragmented ping
            (masked(0x89, &[0u8; 126]), 1002),    // control frame over 125
            (masked(0x80, b"hi"), 1002),          // continuation of nothing
            (masked(0x81, &[0xff, 0xfe]), 1007),  // text not UTF-8
            (masked(0x88, &[0x03, 0xed]), 1002),  // close code 1005
            (masked(0x81, &[b'a'; 2000]), 1009),  // over the limit
        ];
        for (bytes, code) in cases {
            let out = read_all(&bytes, 1024);
            match out.last() {
                Some(Err(e)) => assert_eq!(e.close_reason().code(), code, "{bytes:02x?}"),
                other => panic!("{bytes:02x?}: {other:?}"),
            }
        }
        // A new data frame inside a fragmented message.
        let mut interleaved = masked(0x01, b"a");
        interleaved.extend(masked(0x81, b"b"));
        assert_eq!(
            read_all(&interleaved, 1024)[0]
                .as_ref()
                .unwrap_err()
                .close_reason()
                .code(),
            1002
        );
        // Fragments adding up to more than the limit.
        let mut big = masked(0x01, &[b'a'; 600]);
        big.extend(masked(0x80, &[b'a'; 600]));
        assert_eq!(read_all(&big, 1024), [Err(FrameError::TooBig)]);
    }

    /// A length over the limit is refused from the header, before its payload arrives.
    #[test]
    fn an_oversized_length_is_refused_from_the_header() {
        let header = [0x81, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(read_all(&header, 1024), [Err(FrameError::TooBig)]);
        let huge = [0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(read_all(&huge, 1024), [Err(FrameError::TooBig)]);
    }

    #[test]
    fn binary_close_and_pong_are_reported() {
        let mut bytes = masked(0x82, &[1, 2, 3]);
        bytes.extend(masked(0x8A, b""));
        bytes.extend(masked(0x88, &[0x03, 0xE8, b'o', b'k']));
        assert_eq!(
            read_all(&bytes, 1024),
            [
                Ok(ClientFrame::Binary),
                Ok(ClientFrame::Pong),
                Ok(ClientFrame::Close(Some(1000)))
            ]
        );
        assert_eq!(
            read_all(&masked(0x88, b""), 1024),
            [Ok(ClientFrame::Close(None))]
        );
    }
}
