//! Frames on the TCP peer transport: a 4-byte big-endian length, then a payload in the one
//! codec of [`crate::wire`] (the simulator runs the same codec), whose hello body is this
//! transport's [`PeerHello`].
//!
//! Invariants: a frame longer than [`FRAME_BYTES_MAX`] is refused before its body is read, so
//! a peer cannot make this node allocate without bound; an unknown version is refused before
//! the body is trusted; every value is decoded into a validated type and every message is
//! checked whole (see `wire`); a hello lists at most [`PEERS_MAX`] peers.

use crate::ids::{Location, NodeId};
use crate::production::membership::PEERS_MAX;
use crate::wire::{self, Frame, WireError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame payload accepted.
pub const FRAME_BYTES_MAX: u32 = wire::FRAME_BYTES_MAX as u32;

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

/// A hello's body: who is talking, and the peers it has heard from directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub sender: PeerInfo,
    pub known_peers: Vec<(NodeId, SocketAddr)>,
}

/// A frame of this transport: the peer protocol's one envelope with this transport's hello.
pub type PeerFrame = Frame<PeerHello>;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// The frame as bytes on the wire, length prefix included.
pub fn encode_frame(frame: &PeerFrame) -> Result<Vec<u8>, FrameError> {
    let payload = wire::encode_frame(frame)?;
    let mut bytes = Vec::with_capacity(4 + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Decodes and validates one frame's payload.
pub fn decode_payload(payload: &[u8]) -> Result<PeerFrame, FrameError> {
    Ok(match wire::decode_frame(payload)? {
        Frame::Hello(body) => {
            let hello: PeerHello = wire::decode_hello(body)?;
            if hello.known_peers.len() > PEERS_MAX {
                return Err(WireError::Invalid(format!(
                    "a hello listing {} peers, more than {PEERS_MAX}",
                    hello.known_peers.len()
                ))
                .into());
            }
            Frame::Hello(hello)
        }
        Frame::Heartbeat => Frame::Heartbeat,
        Frame::Message(message) => Frame::Message(message),
    })
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<PeerFrame>, FrameError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length);
    if length == 0 {
        return Err(WireError::Empty.into());
    }
    if length > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(length as usize).into());
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
    use crate::wire::Message;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let body = Frame::Message(Message::Confirm {
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
            Err(FrameError::Wire(WireError::TooLarge(_)))
        ));

        let mut future = vec![0, 0, 0, 0];
        future = postcard::to_extend(&(wire::FRAME_VERSION + 1), future).unwrap();
        future.push(1);
        let length = (future.len() - 4) as u32;
        future[..4].copy_from_slice(&length.to_be_bytes());
        let mut reader = &future[..];
        assert!(matches!(
            read_frame(&mut reader).await,
            Err(FrameError::Wire(WireError::UnsupportedVersion(_)))
        ));
    }
}
