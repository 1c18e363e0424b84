//! The garbage peer: a hostile process on the cluster's network that sends frames with
//! hostile contents, to prove that nothing a peer says can crash a node, poison its store or
//! reach its state unchecked.
//!
//! What it sends, one frame per occurrence to a random node that is up:
//! - raw random bytes, sometimes behind a valid header so the body decoder runs;
//! - copies of real frames it saw on the network, under its own name, unchanged or with bytes
//!   flipped, overwritten, cut or added;
//! - copies of real frames under the real sender's name with a violation the receiver can
//!   prove: a malformed event key, a term or index beyond the protocol's limits, entries out
//!   of sequence, an event that is not JSON, a count far beyond the bytes that follow, or a
//!   Raft message in another node's name or for another node;
//! - exact replays of old real frames under their real sender's name, which the protocols
//!   must tolerate (a network may deliver a copy late).
//!
//! Its own name is no member's: the cluster's members are trusted to run the protocol (Raft
//! is not Byzantine-tolerant), so it never changes what a member says in a way the receiver
//! cannot check. Whatever it sends, every frame but a replay must be refused: by the codec,
//! or by the node (its `messages_refused` counter moves). A frame that is taken instead is a
//! violation of `garbage_refused`.

use crate::checkers::Checker;
use crate::world::{Event, Violation, World};
use borough::ids::NodeId;
use borough::raft::message::{INDEX_MAX, TERM_MAX};
use borough::raft::MessageBody;
use borough::seams::Rng;
use borough::wire::{self, Frame, FrameKind, Message};
use std::collections::VecDeque;

/// The garbage peer's node id: no member has it.
pub const GARBAGE_PEER: NodeId = NodeId(1_000_000);

/// Real frames kept for copying.
const CAPTURED_FRAMES_MAX: usize = 64;

/// How a garbage frame was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GarbageKind {
    RandomBytes,
    /// A real frame under the garbage peer's name.
    OutsiderCopy,
    /// A real frame with bytes changed, under the garbage peer's name.
    MutatedCopy,
    /// A real frame in the real sender's name, with a provable violation.
    Impersonated(Violating),
    /// An exact old frame in its real sender's name: legal, and must be tolerated.
    Replay,
}

/// The provable violations an impersonated frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violating {
    MalformedKey,
    TermBeyondLimit,
    IndexBeyondLimit,
    EntriesOutOfSequence,
    EventNotJson,
    HugeCount,
    InnerSenderSwapped,
    AddresseeSwapped,
}

/// What the garbage peer did and saw.
#[derive(Debug, Default)]
pub struct GarbageState {
    /// Whether a garbage peer runs (frames are captured only then).
    pub active: bool,
    captured: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    pub sent: u64,
    /// Refused by the codec, or by the node.
    pub refused: u64,
    pub replays: u64,
}

impl GarbageState {
    /// Keeps a copy of a real frame for the garbage peer.
    pub fn capture(&mut self, from: NodeId, to: NodeId, frame: &[u8]) {
        if !self.active {
            return;
        }
        if self.captured.len() == CAPTURED_FRAMES_MAX {
            self.captured.pop_front();
        }
        self.captured.push_back((from, to, frame.to_vec()));
    }
}

/// One occurrence: forge or copy a frame and send it to a random up node.
pub fn occur(world: &mut World) {
    let up: Vec<NodeId> = world
        .nodes
        .iter()
        .filter(|node| node.is_up())
        .map(|node| node.id)
        .collect();
    if up.is_empty() {
        return;
    }
    let target = up[world.draw(0, up.len() as u64 - 1) as usize];
    let (from, to, frame, kind) = forge(world, target);
    world.garbage.sent += 1;
    world.trace.record(
        world.now_micros(),
        "garbage",
        u64::from(to.0),
        frame.len() as u64,
    );
    tracing::debug!(?kind, %from, %to, bytes = frame.len(), "garbage peer sends");
    let delay = world.config.latency_micros.draw(&mut world.rng);
    let at = world.now_micros() + delay;
    world.schedule(
        at,
        Event::Deliver {
            from,
            to,
            frame,
            garbage: Some(kind),
        },
    );
}

/// A frame reached no node (the codec refused it, or it was a hello or heartbeat).
pub fn on_ignored(world: &mut World, garbage: Option<GarbageKind>) {
    if let Some(kind) = garbage {
        if kind == GarbageKind::Replay {
            world.garbage.replays += 1;
        } else {
            world.garbage.refused += 1;
        }
    }
}

/// A garbage frame decoded and the node handled it; `refused` says whether it refused it.
pub fn on_taken(
    world: &mut World,
    from: NodeId,
    to: NodeId,
    garbage: Option<GarbageKind>,
    refused: bool,
) {
    let Some(kind) = garbage else {
        return;
    };
    if kind == GarbageKind::Replay {
        world.garbage.replays += 1;
        return;
    }
    if refused {
        world.garbage.refused += 1;
        return;
    }
    world.violations.push(Violation {
        at_micros: world.now_micros(),
        checker: Checker::GarbageRefused,
        message: format!("{to} took a hostile frame ({kind:?}) sent in the name of {from}"),
    });
}

fn forge(world: &mut World, target: NodeId) -> (NodeId, NodeId, Vec<u8>, GarbageKind) {
    let roll = world.draw(0, 99);
    let copies: Vec<usize> = (0..world.garbage.captured.len()).collect();
    if roll < 15 || copies.is_empty() {
        return (
            GARBAGE_PEER,
            target,
            random_frame(world),
            GarbageKind::RandomBytes,
        );
    }
    let pick = copies[world.draw(0, copies.len() as u64 - 1) as usize];
    let (from, to, frame) = world.garbage.captured[pick].clone();
    match roll {
        15..=29 => (GARBAGE_PEER, target, frame, GarbageKind::OutsiderCopy),
        30..=54 => {
            let mutated = mutate_bytes(world, frame);
            (GARBAGE_PEER, target, mutated, GarbageKind::MutatedCopy)
        }
        55..=69 => (from, to, frame, GarbageKind::Replay),
        _ => match impersonate(world, from, to, &frame) {
            Some((violating, forged)) => (from, to, forged, GarbageKind::Impersonated(violating)),
            None => (
                GARBAGE_PEER,
                target,
                random_frame(world),
                GarbageKind::RandomBytes,
            ),
        },
    }
}

fn random_bytes(world: &mut World, length: usize) -> Vec<u8> {
    (0..length).map(|_| world.rng.below(256) as u8).collect()
}

/// Random bytes, half of the time behind a valid version and frame kind.
fn random_frame(world: &mut World) -> Vec<u8> {
    let length = world.draw(0, 256) as usize;
    let mut frame = Vec::new();
    if world.rng.chance(0.5) {
        let kinds = [FrameKind::Hello, FrameKind::Heartbeat, FrameKind::Message];
        frame = wire::header(kinds[world.draw(0, 2) as usize]);
    }
    frame.extend(random_bytes(world, length));
    frame
}

/// One to four byte-level changes: flips, overwrites, cuts, insertions.
fn mutate_bytes(world: &mut World, mut frame: Vec<u8>) -> Vec<u8> {
    for _ in 0..world.draw(1, 4) {
        if frame.is_empty() {
            frame.push(world.rng.below(256) as u8);
            continue;
        }
        let at = world.draw(0, frame.len() as u64 - 1) as usize;
        match world.draw(0, 3) {
            0 => frame[at] ^= 1 << world.draw(0, 7),
            1 => frame[at] = world.rng.below(256) as u8,
            2 => frame.truncate(at),
            _ => {
                let length = world.draw(1, 16) as usize;
                let inserted = random_bytes(world, length);
                frame.splice(at..at, inserted);
            }
        }
    }
    frame
}

/// A real frame changed so that the receiver can prove it wrong, or `None` when the frame has
/// nothing to change that way.
fn impersonate(
    world: &mut World,
    from: NodeId,
    to: NodeId,
    frame: &[u8],
) -> Option<(Violating, Vec<u8>)> {
    let Ok(Frame::Message(message)) = wire::decode_frame(frame) else {
        return None;
    };
    match message {
        Message::Raft(mut envelope) if !envelope.messages.is_empty() => {
            let index = world.draw(0, envelope.messages.len() as u64 - 1) as usize;
            let members: Vec<NodeId> = world
                .node_ids()
                .into_iter()
                .filter(|node| *node != from && *node != to)
                .collect();
            let (_, raft) = &mut envelope.messages[index];
            let violating = match world.draw(0, 4) {
                0 if !members.is_empty() => {
                    raft.from = members[world.draw(0, members.len() as u64 - 1) as usize];
                    Violating::InnerSenderSwapped
                }
                1 if !members.is_empty() => {
                    raft.to = members[world.draw(0, members.len() as u64 - 1) as usize];
                    Violating::AddresseeSwapped
                }
                2 => {
                    raft.term = TERM_MAX + 1 + world.draw(0, 1 << 20);
                    Violating::TermBeyondLimit
                }
                3 => match &mut raft.body {
                    MessageBody::Append { entries, .. } if !entries.is_empty() => {
                        let entry = world.draw(0, entries.len() as u64 - 1) as usize;
                        entries[entry].index += 1 + world.draw(0, 3);
                        Violating::EntriesOutOfSequence
                    }
                    MessageBody::Append { prev_log_index, .. } => {
                        *prev_log_index = INDEX_MAX + 1;
                        Violating::IndexBeyondLimit
                    }
                    _ => {
                        raft.term = u64::MAX;
                        Violating::TermBeyondLimit
                    }
                },
                _ => return Some((Violating::HugeCount, huge_count(Message::Raft(envelope)))),
            };
            wire::encode_message_unchecked(&Message::Raft(envelope))
                .ok()
                .map(|forged| (violating, forged))
        }
        // Membership and routed requests run only in clusters of named partitions.
        Message::Raft(_) | Message::Cluster(_) | Message::Route(_) => None,
        Message::Replicate { write_id, key, .. } if world.rng.chance(0.5) => {
            let forged = Message::Replicate {
                write_id,
                key,
                event: b"{\"unterminated\": [1, 2".to_vec(),
            };
            wire::encode_message_unchecked(&forged)
                .ok()
                .map(|forged| (Violating::EventNotJson, forged))
        }
        message @ (Message::Replicate { .. }
        | Message::ReplicateResult { .. }
        | Message::Confirm { .. }) => {
            if world.rng.chance(0.3) {
                return Some((Violating::HugeCount, huge_count(message)));
            }
            malformed_key(world, frame).map(|forged| (Violating::MalformedKey, forged))
        }
    }
}

/// The frame of `message` cut where its first length or count goes, which says 2^35 and is
/// followed by a few bytes: a decoder that trusted it would try to allocate it.
fn huge_count(message: Message) -> Vec<u8> {
    const HUGE: [u8; 6] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    let mut frame = wire::header(FrameKind::Message);
    match message {
        // The event's byte length, after a valid write id and key.
        Message::Replicate { write_id, key, .. } => {
            frame.push(0);
            frame = postcard::to_extend(&(write_id, key), frame).expect("a key encodes");
        }
        // The refusal text's length, after a valid write id, key, `Err` and reason.
        Message::ReplicateResult { write_id, key, .. } => {
            frame.push(1);
            frame = postcard::to_extend(&(write_id, key), frame).expect("a key encodes");
            frame.extend_from_slice(&[1, 0]);
        }
        // The count of keys, or of Raft messages.
        Message::Confirm { .. } => frame.push(2),
        Message::Raft(_) => frame.push(3),
        Message::Cluster(_) => frame.push(4),
        Message::Route(_) => frame.push(5),
    }
    frame.extend_from_slice(&HUGE);
    frame.extend_from_slice(&[1, 2, 3]);
    frame
}

/// The frame with one character of an event key (35 bytes of digits, hex and dashes behind
/// its length byte) replaced by a character no key has.
fn malformed_key(world: &mut World, frame: &[u8]) -> Option<Vec<u8>> {
    let starts: Vec<usize> = (0..frame.len().saturating_sub(35))
        .filter(|&at| frame[at] == 35 && frame[at + 18] == b'-' && frame[at + 27] == b'-')
        .collect();
    if starts.is_empty() {
        return None;
    }
    let start = starts[world.draw(0, starts.len() as u64 - 1) as usize];
    let mut forged = frame.to_vec();
    let at = start + 1 + world.draw(0, 34) as usize;
    forged[at] = b'x';
    Some(forged)
}
