//! `ReadCache`: the most recently synced groups of a shard, kept in memory so that
//! consumers tailing the log (the common case) are served without disk reads.
//!
//! Bounded by bytes; the oldest groups leave first. Entries are in log order, so a lookup
//! is a binary search on (segment, position).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::core::SegmentPosition;

struct CachedGroup {
    at: SegmentPosition,
    bytes: Rc<Vec<u8>>,
}

/// Recently synced groups, by where they lie in the core log.
pub struct ReadCache {
    groups: VecDeque<CachedGroup>,
    held_bytes: usize,
    held_bytes_max: usize,
}

impl ReadCache {
    /// An empty cache holding at most `held_bytes_max` bytes of groups.
    pub fn new(held_bytes_max: usize) -> Self {
        ReadCache {
            groups: VecDeque::new(),
            held_bytes: 0,
            held_bytes_max,
        }
    }

    /// Adds the group just synced at `at`, evicting the oldest.
    pub fn insert(&mut self, at: SegmentPosition, bytes: Rc<Vec<u8>>) {
        if bytes.len() > self.held_bytes_max {
            return;
        }
        self.held_bytes += bytes.len();
        self.groups.push_back(CachedGroup { at, bytes });
        while self.held_bytes > self.held_bytes_max {
            let Some(oldest) = self.groups.pop_front() else {
                break;
            };
            self.held_bytes -= oldest.bytes.len();
        }
    }

    /// The group holding the `len_bytes` bytes at `at`, with the start of that range
    /// within the group.
    pub fn get(&self, at: SegmentPosition, len_bytes: usize) -> Option<(Rc<Vec<u8>>, usize)> {
        let after = self.groups.partition_point(|group| group.at <= at);
        let group = self.groups.get(after.checked_sub(1)?)?;
        if group.at.segment_index != at.segment_index {
            return None;
        }
        let start = usize::try_from(at.position - group.at.position).ok()?;
        (start + len_bytes <= group.bytes.len()).then(|| (group.bytes.clone(), start))
    }

    /// Drops every group of segment `segment_index`: retention rewrote it, so its
    /// positions now hold other bytes.
    pub fn forget_segment(&mut self, segment_index: u64) {
        let held_bytes = &mut self.held_bytes;
        self.groups.retain(|group| {
            let keep = group.at.segment_index != segment_index;
            if !keep {
                *held_bytes -= group.bytes.len();
            }
            keep
        });
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment_index: u64, position: u64) -> SegmentPosition {
        SegmentPosition {
            segment_index,
            position,
        }
    }

    #[test]
    fn finds_ranges_inside_cached_groups_and_evicts_oldest() {
        let mut cache = ReadCache::new(200);
        cache.insert(at(0, 4096), Rc::new(vec![1; 100]));
        cache.insert(at(0, 8192), Rc::new(vec![2; 100]));
        assert_eq!(
            cache.get(at(0, 4096 + 10), 20).map(|(_, start)| start),
            Some(10)
        );
        assert!(
            cache.get(at(0, 4096 + 90), 20).is_none(),
            "range runs past the group"
        );
        assert!(cache.get(at(1, 4096), 1).is_none(), "other segment");
        cache.insert(at(1, 4096), Rc::new(vec![3; 100]));
        assert!(cache.get(at(0, 4096), 1).is_none(), "oldest group evicted");
        assert_eq!(
            cache.get(at(1, 4100), 4).map(|(bytes, start)| bytes[start]),
            Some(3)
        );
        assert_eq!(cache.held_bytes(), 200);
    }
}
