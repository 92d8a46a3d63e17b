//! The wire format of `qwm serve` (protocol 1; docs/serve.md is the client's reference).
//!
//! Every message, either way, is a 12-byte header, a UTF-8 JSON object and a binary payload:
//!
//! ```text
//! b"QWMS" | json_len: u32 LE | blob_len: u32 LE | json (json_len bytes) | blob (blob_len bytes)
//! ```
//!
//! Requests carrying a camera frame put its pixels (RGB `u8`, row-major HWC) in the blob, so a
//! 224x224 frame costs 150 KB on the wire and no encoding. Replies have an empty blob.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The protocol version `hello` reports and accepts.
pub const PROTOCOL: u32 = 1;
/// The first four bytes of every message.
pub const MAGIC: &[u8; 4] = b"QWMS";
/// Header bytes before the JSON.
pub const HEADER_LEN: usize = 12;
/// Largest JSON part accepted (a request is a few hundred bytes).
pub const MAX_JSON: u32 = 1 << 20;

/// Why a message could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection before the first byte of a message (a clean end).
    Closed,
    /// The peer closed or stalled inside a message (`got` of `want` bytes of its `part`).
    Truncated {
        /// Header, json or blob.
        part: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes declared.
        want: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    BadMagic([u8; 4]),
    /// A declared length is over the limit.
    TooLarge {
        /// json or blob.
        part: &'static str,
        /// Declared bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Another I/O error.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "connection closed"),
            ReadError::Truncated { part, got, want } => write!(
                f,
                "truncated message: {got} of {want} bytes of the {part} arrived"
            ),
            ReadError::BadMagic(m) => write!(
                f,
                "bad magic {m:02x?}: every message starts with \"QWMS\" (see docs/serve.md)"
            ),
            ReadError::TooLarge { part, len, max } => write!(
                f,
                "the {part} declares {len} bytes, more than the {max} this server accepts"
            ),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// One message as read: its JSON text and its payload.
#[derive(Debug)]
pub struct Message {
    /// The JSON part.
    pub json: Vec<u8>,
    /// The binary part.
    pub blob: Vec<u8>,
}

fn read_full(
    r: &mut dyn Read,
    buf: &mut [u8],
    part: &'static str,
    first: bool,
) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && first => return Err(ReadError::Closed),
            Ok(0) => {
                return Err(ReadError::Truncated {
                    part,
                    got,
                    want: buf.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Truncated {
                    part,
                    got,
                    want: buf.len(),
                })
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
}

/// Wait for the first byte of the next message ([`ReadError::Closed`] when the peer leaves
/// between messages). The server arms its read timeout after it: a peer may idle between
/// messages, not inside one.
pub fn read_first_byte(r: &mut dyn Read) -> Result<u8, ReadError> {
    let mut b = [0u8; 1];
    read_full(r, &mut b, "header", true)?;
    Ok(b[0])
}

/// Read the rest of a message whose first byte was `first`.
pub fn read_message_after(
    r: &mut dyn Read,
    first: u8,
    max_blob: u32,
) -> Result<Message, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = first;
    read_full(r, &mut header[1..], "header", false).map_err(|e| match e {
        ReadError::Truncated { got, .. } => ReadError::Truncated {
            part: "header",
            got: got + 1,
            want: HEADER_LEN,
        },
        other => other,
    })?;
    let magic: [u8; 4] = header[..4].try_into().expect("4 bytes");
    if &magic != MAGIC {
        return Err(ReadError::BadMagic(magic));
    }
    let json_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let blob_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if json_len > MAX_JSON {
        return Err(ReadError::TooLarge {
            part: "json",
            len: json_len as u64,
            max: MAX_JSON as u64,
        });
    }
    if blob_len > max_blob {
        return Err(ReadError::TooLarge {
            part: "blob",
            len: blob_len as u64,
            max: max_blob as u64,
        });
    }
    let mut json = vec![0u8; json_len as usize];
    read_full(r, &mut json, "json", false)?;
    let mut blob = vec![0u8; blob_len as usize];
    read_full(r, &mut blob, "blob", false)?;
    Ok(Message { json, blob })
}

/// Read one whole message (no timeouts in between).
pub fn read_message(r: &mut dyn Read, max_blob: u32) -> Result<Message, ReadError> {
    let first = read_first_byte(r)?;
    read_message_after(r, first, max_blob)
}

/// Write one message (header, JSON, payload) and flush.
pub fn write_message(w: &mut dyn Write, json: &[u8], blob: &[u8]) -> io::Result<()> {
    let mut head = Vec::with_capacity(HEADER_LEN + json.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    head.extend_from_slice(json);
    w.write_all(&head)?;
    w.write_all(blob)?;
    w.flush()
}

/// A frame's description in a request (its pixels are the message's blob).
#[derive(Debug, Deserialize)]
pub struct FrameFields {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Raw proprioception (`proprio_dim` finite values).
    pub proprio: Vec<f32>,
}

/// Operations (`"op"` in the JSON). Fields a request does not need (such as the `id` every
/// request may carry, which the reply echoes) are ignored.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Versions and the model's and controller's facts.
    Hello {
        /// The protocol the client speaks (must be [`PROTOCOL`] when given).
        #[serde(default)]
        protocol: Option<u32>,
    },
    /// Encode the goal observation.
    SetGoal(FrameFields),
    /// Plan from this observation; the reply carries the actions to execute.
    Act(FrameFields),
    /// The observation after a model step inside the last act's actions (models with a
    /// history of more than one frame).
    Observe(FrameFields),
    /// Start the next episode, or episode `episode`.
    Reset {
        /// The episode (planner noise stream) to start.
        #[serde(default)]
        episode: Option<u64>,
    },
    /// Counters, timings and memory.
    Stats {},
    /// Reply, then stop the server.
    Shutdown {},
}

/// Error codes of a failed request (`"error": {"code": ..}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The JSON is not an object of a known operation with valid fields.
    BadRequest,
    /// The header is wrong (magic) or a length is over the limit: the connection is closed.
    BadMessage,
    /// The frame's size, pixels or proprioception are wrong.
    BadInput,
    /// The call is out of order (act before set_goal, observe without act).
    BadState,
    /// A protocol version this server does not speak.
    Unsupported,
    /// Planning failed (the model produced no finite objective, a memory limit was hit).
    Failed,
}

/// A failed request's reply body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(json: &[u8], blob: &[u8]) -> Vec<u8> {
        let mut v = vec![];
        write_message(&mut v, json, blob).unwrap();
        v
    }

    #[test]
    fn messages_round_trip_and_broken_framing_is_named() {
        let m = framed(br#"{"op":"hello"}"#, b"abc");
        assert_eq!(&m[..4], MAGIC);
        let got = read_message(&mut &m[..], 16).unwrap();
        assert_eq!(
            (&got.json[..], &got.blob[..]),
            (&br#"{"op":"hello"}"#[..], &b"abc"[..])
        );
        assert!(matches!(
            read_message(&mut &[][..], 16),
            Err(ReadError::Closed)
        ));
        assert!(matches!(
            read_message(&mut &m[..5], 16),
            Err(ReadError::Truncated {
                part: "header",
                got: 5,
                want: 12
            })
        ));
        assert!(matches!(
            read_message(&mut &m[..m.len() - 1], 16),
            Err(ReadError::Truncated {
                part: "blob",
                got: 2,
                want: 3
            })
        ));
        let mut bad = m.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_message(&mut &bad[..], 16),
            Err(ReadError::BadMagic(_))
        ));
        assert!(matches!(
            read_message(&mut &m[..], 2),
            Err(ReadError::TooLarge {
                part: "blob",
                len: 3,
                max: 2
            })
        ));
        let mut huge = m.clone();
        huge[4..8].copy_from_slice(&(MAX_JSON + 1).to_le_bytes());
        let e = read_message(&mut &huge[..], 16).unwrap_err();
        assert!(e.to_string().contains("json"), "{e}");
    }
}
