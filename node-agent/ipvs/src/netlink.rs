//! Sequence numbers for pipelined netlink requests, for this crate's handle and
//! for other netlink clients that pipeline the same way (the agent's rtnetlink).
//!
//! Replies are matched to a chunk of requests by their distance from the
//! chunk's first number, so a chunk never spans the wrap: a chunk across it
//! would never see its last reply matched, and would wait for it forever. 0 is
//! never used (the kernel's own messages carry it).

use std::ops::Range;

/// The sequence numbers of one socket.
#[derive(Debug)]
pub struct Sequences {
    next: u32,
}

impl Default for Sequences {
    fn default() -> Self {
        Sequences { next: 1 }
    }
}

impl Sequences {
    /// Numbers from `next` on (the tests start them near the wrap).
    #[cfg(test)]
    fn starting_at(next: u32) -> Self {
        Sequences { next: next.max(1) }
    }

    /// `count` numbers in a row, restarting at 1 where they would wrap.
    ///
    /// # Panics
    /// When `count` is 2^32 or more.
    pub fn reserve(&mut self, count: usize) -> SequenceRange {
        let count = u32::try_from(count).expect("fewer than 2^32 requests at once");
        let first = match self.next.checked_add(count) {
            Some(_) => self.next,
            None => 1,
        };
        self.next = first + count;
        SequenceRange { first, count }
    }
}

/// The sequence numbers of one chunk of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    first: u32,
    count: u32,
}

impl SequenceRange {
    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The request (its index in the chunk) that a reply with `sequence` answers.
    pub fn index_of(&self, sequence: u32) -> Option<usize> {
        let index = sequence.wrapping_sub(self.first);
        (index < self.count).then_some(index as usize)
    }
}

impl IntoIterator for SequenceRange {
    type Item = u32;
    type IntoIter = Range<u32>;

    fn into_iter(self) -> Range<u32> {
        self.first..self.first + self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_never_spans_the_wrap_and_each_reply_finds_its_request() {
        let mut sequences = Sequences::starting_at(u32::MAX - 2);
        let before = sequences.reserve(2);
        assert_eq!(before.into_iter().collect::<Vec<_>>(), [u32::MAX - 2, u32::MAX - 1]);
        // Three more would cross the wrap: they start again at 1, in a row.
        let across = sequences.reserve(3);
        assert_eq!(across.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(across.index_of(3), Some(2));
        // Replies of the chunk before, or of none, are not this chunk's.
        assert_eq!(across.index_of(u32::MAX - 1), None);
        assert_eq!(across.index_of(4), None);
        assert_eq!(across.index_of(0), None);
        assert_eq!(sequences.reserve(1).first(), 4);
    }

    #[test]
    fn zero_is_never_used() {
        let mut sequences = Sequences::starting_at(0);
        assert_eq!(sequences.reserve(1).first(), 1);
        // Nor is u32::MAX: the number after it would be 0.
        let mut sequences = Sequences::starting_at(u32::MAX);
        assert_eq!(sequences.reserve(1).first(), 1);
    }
}
