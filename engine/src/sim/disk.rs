//! `SimDisk`: segment files in memory that keep what was *written* apart from what was
//! *synced*, so that a simulated power loss can do what a real one does to unsynced writes:
//! keep them, lose them, or tear them at any 512-byte sector, in any order.
//!
//! It plays the role the real `SegmentFile`s play for the shell — prepare (zero-fill and
//! header, unsynced until the preparation's own sync), write a group at a position, sync a
//! segment, read — with faults on demand: EIO on a write or a sync, ENOSPC on a
//! preparation. A process crash (kill -9) keeps every write the "kernel" took; a power loss
//! decides each unsynced write's fate with the simulation's random numbers.

use std::collections::BTreeMap;

use crate::sim::SimRng;

/// The unit a device tears writes at.
pub const SECTOR_SIZE_BYTES: usize = 512;

/// One write not yet covered by a sync.
#[derive(Clone, Debug)]
struct UnsyncedWrite {
    position: usize,
    bytes: Vec<u8>,
}

/// One segment file.
#[derive(Clone, Debug, Default)]
struct SimSegment {
    /// What survives any crash.
    synced: Vec<u8>,
    /// Writes since the last sync, in issue order.
    unsynced: Vec<UnsyncedWrite>,
}

impl SimSegment {
    /// What a reader sees now: synced bytes with every unsynced write applied in order.
    fn current(&self) -> Vec<u8> {
        let mut bytes = self.synced.clone();
        for write in &self.unsynced {
            apply(&mut bytes, write.position, &write.bytes);
        }
        bytes
    }
}

fn apply(target: &mut Vec<u8>, position: usize, bytes: &[u8]) {
    let end = position + bytes.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    if let Some(range) = target.get_mut(position..end) {
        range.copy_from_slice(bytes);
    }
}

/// How a crash treats unsynced writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// The process died; the page cache kept every write (kill -9).
    Process,
    /// The machine lost power: unsynced writes are kept, lost or torn, in any order.
    Power,
}

/// The simulated files of one shard's core log, by segment index.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    segments: BTreeMap<u64, SimSegment>,
}

impl SimDisk {
    /// An empty disk.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The segment indexes that exist, in order.
    #[must_use]
    pub fn segment_indexes(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    /// What segment `index` reads as now (synced bytes plus unsynced writes).
    #[must_use]
    pub fn read(&self, index: u64) -> Option<Vec<u8>> {
        self.segments.get(&index).map(SimSegment::current)
    }

    /// Writes `bytes` at `position` of segment `index` (created empty if missing, as
    /// `open(O_CREAT)` would): written, not synced.
    ///
    /// The device writes whole sectors: a write that starts or ends inside one rewrites the
    /// rest of that sector with what it held, so a tear can reach bytes written (and
    /// synced) before. Cairn never does this (groups are block-aligned); the simulator
    /// must still model it, or it could not catch a writer that does.
    pub fn write(&mut self, index: u64, position: u64, bytes: &[u8]) {
        let position = usize::try_from(position).expect("simulated segments are small");
        let segment = self.segments.entry(index).or_default();
        let start = position - position % SECTOR_SIZE_BYTES;
        let end = (position + bytes.len()).div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES;
        let mut sectors = segment.current();
        sectors.resize(sectors.len().max(end), 0);
        apply(&mut sectors, position, bytes);
        let sectors = sectors.get(start..end).unwrap_or_default().to_vec();
        segment.unsynced.push(UnsyncedWrite {
            position: start,
            bytes: sectors,
        });
    }

    /// A write that failed with EIO part way: some of its sectors may have reached the
    /// device (they stay unsynced, a crash decides).
    pub fn write_failed(&mut self, index: u64, position: u64, bytes: &[u8], rng: &mut SimRng) {
        let sector_count = bytes.len().div_ceil(SECTOR_SIZE_BYTES);
        let kept_sectors = rng.below(sector_count as u64 + 1) as usize;
        let kept_bytes = (kept_sectors * SECTOR_SIZE_BYTES).min(bytes.len());
        if kept_bytes > 0 {
            self.write(index, position, bytes.get(..kept_bytes).unwrap_or_default());
        }
    }

    /// `fallocate` of segment `index` to `size_bytes`: the file exists at that size from now
    /// on, crash or not (new bytes read as zeros; what it held before stays).
    pub fn allocate(&mut self, index: u64, size_bytes: u64) {
        let size_bytes = usize::try_from(size_bytes).expect("simulated segments are small");
        let segment = self.segments.entry(index).or_default();
        if segment.synced.len() < size_bytes {
            segment.synced.resize(size_bytes, 0);
        }
    }

    /// `fdatasync` of segment `index`: every write to it so far becomes durable.
    pub fn sync(&mut self, index: u64) {
        if let Some(segment) = self.segments.get_mut(&index) {
            segment.synced = segment.current();
            segment.unsynced.clear();
        }
    }

    /// A crash. Afterwards every segment holds exactly what survived, all of it synced.
    pub fn crash(&mut self, kind: CrashKind, rng: &mut SimRng) {
        for segment in self.segments.values_mut() {
            let mut writes = std::mem::take(&mut segment.unsynced);
            match kind {
                CrashKind::Process => {
                    for write in &writes {
                        apply(&mut segment.synced, write.position, &write.bytes);
                    }
                }
                CrashKind::Power => {
                    // Writes since the last sync may reach the platter in any order.
                    rng.shuffle(&mut writes);
                    for write in &writes {
                        tear(&mut segment.synced, write, rng);
                    }
                }
            }
        }
    }
}

/// Applies one unsynced write as a power loss would: whole, not at all, or sector by sector
/// (each sector new, old, or — rarely — garbage).
fn tear(target: &mut Vec<u8>, write: &UnsyncedWrite, rng: &mut SimRng) {
    match rng.below(3) {
        0 => apply(target, write.position, &write.bytes),
        1 => {}
        _ => {
            for (index, sector) in write.bytes.chunks(SECTOR_SIZE_BYTES).enumerate() {
                let position = write.position + index * SECTOR_SIZE_BYTES;
                match rng.below(16) {
                    0..=6 => apply(target, position, sector),
                    7..=14 => {}
                    _ => {
                        let garbage: Vec<u8> =
                            (0..sector.len()).map(|_| rng.next_u64() as u8).collect();
                        apply(target, position, &garbage);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_makes_writes_survive_a_power_loss() {
        let mut rng = SimRng::new(7);
        for _ in 0..50 {
            let mut disk = SimDisk::new();
            disk.write(0, 0, &[1; 4096]);
            disk.sync(0);
            disk.write(0, 4096, &[2; 4096]);
            disk.crash(CrashKind::Power, &mut rng);
            let bytes = disk.read(0).unwrap();
            assert_eq!(&bytes[..4096], &[1; 4096][..], "synced bytes survive");
        }
    }

    #[test]
    fn a_power_loss_keeps_loses_or_tears_unsynced_writes() {
        let mut rng = SimRng::new(11);
        let (mut kept, mut lost, mut torn) = (0, 0, 0);
        for _ in 0..300 {
            let mut disk = SimDisk::new();
            disk.write(0, 0, &[0; 8192]);
            disk.sync(0);
            disk.write(0, 0, &[9; 8192]);
            disk.crash(CrashKind::Power, &mut rng);
            let bytes = disk.read(0).unwrap();
            let new_count = bytes.iter().filter(|byte| **byte == 9).count();
            match new_count {
                8192 => kept += 1,
                0 => lost += 1,
                _ => torn += 1,
            }
        }
        assert!(kept > 0 && lost > 0 && torn > 0, "{kept} {lost} {torn}");
    }

    #[test]
    fn a_process_crash_keeps_every_write() {
        let mut rng = SimRng::new(3);
        let mut disk = SimDisk::new();
        disk.write(1, 4096, &[5; 100]);
        disk.crash(CrashKind::Process, &mut rng);
        assert_eq!(disk.read(1).unwrap()[4096..4196], [5; 100]);
    }
}
