//! Frames on the TCP peer transport: a 4-byte big-endian length, then a postcard-encoded
//! [`PeerFrame`] whose first field is the frame version.
//!
//! Invariants: a frame longer than [`FRAME_BYTES_MAX`] is refused before its body is read, so
//! a peer cannot make this node allocate without bound; an unknown version is refused before
//! the body is trusted. postcard because the log and the wire already use it: a compact,
//! documented and stable encoding with no schema to ship and no per-field overhead.

use crate::ids::{Location, NodeId};
use crate::wire::Message;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The frame version this build speaks.
pub const FRAME_VERSION: u16 = 1;

/// The largest frame accepted: an event is at most 1 MiB, so this leaves room for its
/// envelope and for a batch of confirmations.
pub const FRAME_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// What a node tells its peers about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: NodeId,
    pub location: Location,
    /// Where its peer port listens.
    pub peer_address: SocketAddr,
    /// Where its client HTTP API listens (used for reads merged across the cluster).
    pub http_address: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameBody {
    /// First frame on every connection: who is talking, and which peers it knows of.
    Hello {
        sender: PeerInfo,
        known_peers: Vec<(NodeId, SocketAddr)>,
    },
    /// Keeps the receiver's view of the sender fresh while there is nothing else to say.
    Heartbeat,
    /// A message of the node's protocol.
    Message(Message),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFrame {
    pub version: u16,
    pub body: FrameBody,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit of {FRAME_BYTES_MAX}")]
    TooLarge(u64),
    #[error("empty frame")]
    Empty,
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u16),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// The frame as bytes on the wire, length prefix included.
pub fn encode_frame(body: &FrameBody) -> Result<Vec<u8>, FrameError> {
    let frame = PeerFrame {
        version: FRAME_VERSION,
        body: body.clone(),
    };
    let mut bytes = vec![0; 4];
    bytes = postcard::to_extend(&frame, bytes).expect("encoding into a Vec cannot fail");
    let payload_bytes = (bytes.len() - 4) as u64;
    if payload_bytes > FRAME_BYTES_MAX as u64 {
        return Err(FrameError::TooLarge(payload_bytes));
    }
    bytes[..4].copy_from_slice(&(payload_bytes as u32).to_be_bytes());
    Ok(bytes)
}

pub fn decode_payload(payload: &[u8]) -> Result<FrameBody, FrameError> {
    let (version, _) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|error| FrameError::Malformed(error.to_string()))?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let frame: PeerFrame =
        postcard::from_bytes(payload).map_err(|error| FrameError::Malformed(error.to_string()))?;
    Ok(frame.body)
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<FrameBody>, FrameError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length);
    if length == 0 {
        return Err(FrameError::Empty);
    }
    if length > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(length as u64));
    }
    let mut payload = vec![0; length as usize];
    reader.read_exact(&mut payload).await?;
    decode_payload(&payload).map(Some)
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> Result<(), FrameError> {
    writer.write_all(bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKey;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let body = FrameBody::Message(Message::Confirm {
            keys: vec![EventKey::from_parts(1_700_000_000_000_000, NodeId(2), 1)],
        });
        let bytes = encode_frame(&body).unwrap();
        let mut reader = &bytes[..];
        assert_eq!(read_frame(&mut reader).await.unwrap(), Some(body));
        assert!(read_frame(&mut reader).await.unwrap().is_none());

        let oversized = (FRAME_BYTES_MAX + 1).to_be_bytes();
        let mut reader = &oversized[..];
        assert!(matches!(
            read_frame(&mut reader).await,
            Err(FrameError::TooLarge(_))
        ));

        let mut future = vec![0, 0, 0, 0];
        future = postcard::to_extend(&(FRAME_VERSION + 1), future).unwrap();
        let length = (future.len() - 4) as u32;
        future[..4].copy_from_slice(&length.to_be_bytes());
        let mut reader = &future[..];
        assert!(matches!(
            read_frame(&mut reader).await,
            Err(FrameError::UnsupportedVersion(_))
        ));
    }
}
