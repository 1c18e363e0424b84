//! A subscriber's bounded buffer: what a node has handed a subscription and its connection
//! has not sent yet. A subscriber too slow to keep up is cut off, never buffered without
//! bound.
//!
//! Invariants: the buffer holds at most `messages_max` items and `bytes_max` bytes, except
//! that an empty buffer always takes one item (a map's `ready` may be larger than the
//! bound); once an item does not fit, the buffer is cut off: it takes nothing more, and its
//! last item is the resync (made by the caller from [`FeedBuffer::cut_off_revision`]), so
//! the subscriber resumes right after the last item it received.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedBufferLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
}

impl Default for FeedBufferLimits {
    fn default() -> Self {
        Self {
            messages_max: 4096,
            bytes_max: 4 * 1024 * 1024,
        }
    }
}

/// What became of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Taken,
    /// It did not fit: the buffer is cut off now (the caller ends the subscription and
    /// queues the resync).
    CutOff,
    /// The buffer was cut off already.
    Refused,
}

#[derive(Debug)]
pub struct FeedBuffer<T> {
    limits: FeedBufferLimits,
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// The revision of the last item taken (what the subscriber reaches once it has sent
    /// everything buffered).
    revision: Option<u64>,
    cut_off: bool,
}

impl<T> FeedBuffer<T> {
    pub fn new(limits: FeedBufferLimits) -> Self {
        Self {
            limits,
            items: VecDeque::new(),
            bytes: 0,
            revision: None,
            cut_off: false,
        }
    }

    /// Queues an item of `bytes` that brings the subscriber to `revision`.
    pub fn push(&mut self, item: T, bytes: usize, revision: u64) -> Pushed {
        if self.cut_off {
            return Pushed::Refused;
        }
        let fits = self.items.len() < self.limits.messages_max
            && self.bytes.saturating_add(bytes) <= self.limits.bytes_max;
        if !fits && !self.items.is_empty() {
            self.cut_off = true;
            return Pushed::CutOff;
        }
        self.items.push_back((item, bytes));
        self.bytes += bytes;
        self.revision = Some(revision);
        Pushed::Taken
    }

    /// Cuts the buffer off without an item (a bound outside it was reached).
    pub fn cut_off(&mut self) -> Pushed {
        if self.cut_off {
            return Pushed::Refused;
        }
        self.cut_off = true;
        Pushed::CutOff
    }

    /// Queues the resync that ends a cut-off buffer (taken whatever the bounds).
    pub fn push_final(&mut self, item: T, bytes: usize) {
        self.cut_off = true;
        self.items.push_back((item, bytes));
        self.bytes += bytes;
    }

    pub fn pop(&mut self) -> Option<T> {
        let (item, bytes) = self.items.pop_front()?;
        self.bytes -= bytes;
        Some(item)
    }

    pub fn is_cut_off(&self) -> bool {
        self.cut_off
    }

    /// The revision the subscriber resumes from after a cut-off: the last item's it was
    /// given (`None` before its first).
    pub fn cut_off_revision(&self) -> Option<u64> {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_subscriber_is_cut_off_at_its_bound_and_resumes_after_its_last_item() {
        let mut buffer = FeedBuffer::new(FeedBufferLimits {
            messages_max: 3,
            bytes_max: 100,
        });
        // An empty buffer takes one item whatever its size (a large ready).
        assert_eq!(buffer.push("ready", 500, 10), Pushed::Taken);
        assert_eq!(buffer.push("a", 10, 11), Pushed::CutOff);
        assert_eq!(buffer.push("b", 10, 12), Pushed::Refused);
        assert_eq!(buffer.cut_off_revision(), Some(10));
        buffer.push_final("resync", 5);
        assert_eq!(buffer.pop(), Some("ready"));
        assert_eq!(buffer.pop(), Some("resync"));
        assert_eq!(buffer.pop(), None);

        let mut buffer = FeedBuffer::new(FeedBufferLimits {
            messages_max: 3,
            bytes_max: 100,
        });
        for revision in 1..=3 {
            assert_eq!(buffer.push(revision, 10, revision), Pushed::Taken);
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.push(4, 10, 4), Pushed::CutOff, "by messages");
        assert_eq!(buffer.cut_off_revision(), Some(3));
        let mut buffer = FeedBuffer::new(FeedBufferLimits {
            messages_max: 100,
            bytes_max: 25,
        });
        assert_eq!(buffer.push(1, 10, 1), Pushed::Taken);
        assert_eq!(buffer.push(2, 10, 2), Pushed::Taken);
        assert_eq!(buffer.pop(), Some(1));
        assert_eq!(buffer.bytes(), 10);
        assert_eq!(buffer.push(3, 10, 3), Pushed::Taken, "popping makes room");
        assert_eq!(buffer.push(4, 10, 4), Pushed::CutOff, "by bytes");
    }
}
