//! `SimDisk`: the simulator's disk, deterministic, in memory, with seeded faults.
//!
//! # Model
//!
//! The disk is a set of inodes and two namespaces that map file names to inodes:
//! - the **volatile** namespace is what the running process sees: `create`, `rename` and
//!   `remove` change it at once;
//! - the **durable** namespace is what survives a crash: `sync_directory` copies the volatile
//!   namespace into it.
//!
//! Each inode holds its **volatile** bytes (what `read_at` returns), its **durable** bytes (what
//! a crash leaves) and the list of **pending** operations since its last sync
//! (`Write { offset, bytes }`, `SetLen(len)`). `write_at` / `append` / `truncate` change the
//! volatile bytes and record a pending operation; `sync` applies the pending operations to the
//! durable bytes in place and clears the list. Without faults, durable bytes plus pending
//! operations always equal the volatile bytes.
//!
//! `crash()` is the power cut: the volatile namespace becomes the durable one, each inode still
//! named there gets its durable bytes back as its volatile bytes, and inodes no longer named
//! are dropped. A file that was removed but whose removal was never made durable comes back;
//! a file that was synced but whose directory entry was never made durable is gone.
//!
//! `wipe()` destroys the disk (a replaced drive): every file and both namespaces are gone.
//!
//! Iteration is always in name order (`BTreeMap`) and every random draw comes from the
//! `SeededRng` given to [`SimDisk::new`], drawn only when a fault is enabled, so a seed replays
//! a run bit for bit. `Clone` shares the image: the node holds one handle as its `Arc<dyn Disk>`,
//! the simulator's world holds another to set faults, crash, rot and wipe it.
//!
//! # Faults ([`DiskFaults`]) and what the system must survive
//!
//! - **Read corruption** (`read_corruption_ratio`, targeted files only): a `read_at` returns
//!   the data with one random bit flipped; the stored bytes are unchanged, so the fault is
//!   transient. Everything durable must carry a checksum that detects it, and a reader must
//!   retry or fail the read rather than act on the bad bytes.
//! - **Sync failure** (`sync_failure_ratio`, any file): `sync` returns
//!   [`DiskError::SyncFailed`] *and* discards the pending operations without making them
//!   durable. The data stays visible in memory but will never become durable, the way Linux
//!   drops dirty pages after a failed `fsync`; a later successful `sync` does not bring it
//!   back. The store must poison itself (refuse further writes, never acknowledge them) rather
//!   than retry. `sync_directory` fails with the same probability and then the namespace
//!   change is not made durable by that call.
//! - **Torn writes** (`torn_writes`, targeted files only, applied at `crash()`): before the
//!   pending operations of a file are discarded, a seeded-random prefix of them reaches the
//!   durable bytes, and the last write of that prefix may itself be cut to a prefix of its
//!   512-byte sectors (sectors aligned on the file, each written atomically). Recovery must
//!   detect and drop a torn or partial tail (checksummed, length-prefixed records) and never
//!   treat bytes past the last sync as acknowledged.
//! - **Bit rot** ([`SimDisk::rot`], targeted files only): one random bit of a non-empty file's
//!   durable bytes flips, persistently; the process sees it too unless the byte is dirty in
//!   memory (covered by a pending operation, or lost by a failed sync). Checksums must detect
//!   it, and the node must repair the data from its replicas or refuse to serve it.
//! - **Wipe** ([`SimDisk::wipe`]): the node restarts with an empty disk and must rejoin as a
//!   new, empty replica: it must not vote or acknowledge as if it remembered its old state.
//!
//! `target_suffixes` names the files the corruption, torn-write and rot faults target (for
//! example `[".wal"]`); an empty list targets every file.

use borough::seams::{Disk, DiskError, Rng, SeededRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The unit a write can be torn at: a sector is written entirely or not at all.
pub const SECTOR_SIZE: u64 = 512;

/// The largest file the simulated disk holds; beyond it writes fail instead of exhausting
/// memory (a simulated node never needs this much).
pub const MAX_FILE_LEN: u64 = 1 << 32;

/// The name reported by a failed `sync_directory`.
const DIRECTORY: &str = "<directory>";

/// The faults a [`SimDisk`] injects; the default injects none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskFaults {
    /// Probability that a `read_at` of a targeted file returns one bit flipped (transient).
    pub read_corruption_ratio: f64,
    /// Probability that a `sync` (of any file) or `sync_directory` fails, discarding what it
    /// would have made durable.
    pub sync_failure_ratio: f64,
    /// Whether a crash may make a prefix of a targeted file's pending operations durable,
    /// the last write possibly torn at a sector boundary.
    pub torn_writes: bool,
    /// Name suffixes of the files the corruption, torn-write and rot faults target; empty
    /// means every file.
    pub target_suffixes: Vec<String>,
}

impl DiskFaults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether the corruption, torn-write and rot faults apply to `name`.
    pub fn targets(&self, name: &str) -> bool {
        self.target_suffixes.is_empty()
            || self
                .target_suffixes
                .iter()
                .any(|suffix| name.ends_with(suffix.as_str()))
    }
}

/// Counters over the disk's whole life (they survive crashes and wipes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// `sync` and `sync_directory` calls on existing files, failed or not.
    pub syncs: u64,
    /// Of those, the ones that failed.
    pub failed_syncs: u64,
    /// Bytes passed to `write_at` / `append`.
    pub bytes_written: u64,
    /// `read_at` calls that returned data.
    pub reads: u64,
    /// Of those, the ones that returned a flipped bit.
    pub corrupted_reads: u64,
    pub crashes: u64,
    /// Writes cut at a sector boundary by crashes.
    pub torn_writes: u64,
    /// Bits flipped by [`SimDisk::rot`].
    pub rots: u64,
    pub wipes: u64,
}

/// What one [`SimDisk::crash`] lost, for tracing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Durable files (in name order) whose unsynced data was lost in whole or in part.
    pub files_affected: Vec<String>,
    /// Writes that reached the disk cut to a prefix of their sectors.
    pub writes_torn: u64,
    /// Pending operations (writes and length changes) that did not reach the disk at all.
    pub writes_dropped: u64,
    /// Whether creations, renames or removals not made durable were undone.
    pub namespace_reverted: bool,
}

/// The simulator's disk: cheap to clone, every clone shares one image.
#[derive(Clone)]
pub struct SimDisk {
    image: Arc<Mutex<DiskImage>>,
}

type InodeId = u64;

struct DiskImage {
    inodes: BTreeMap<InodeId, Inode>,
    /// The namespace the running process sees.
    names: BTreeMap<String, InodeId>,
    /// The namespace a crash leaves.
    durable_names: BTreeMap<String, InodeId>,
    next_inode: InodeId,
    faults: DiskFaults,
    rng: SeededRng,
    stats: DiskStats,
}

#[derive(Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Operations since the last sync, oldest first.
    pending: Vec<Pending>,
    /// A failed sync discarded pending operations: the volatile bytes hold data that will
    /// never be durable.
    lost: bool,
}

enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Pending {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Pending::Write {
                offset,
                bytes: data,
            } => write_into(bytes, *offset, data),
            Pending::SetLen(len) => bytes.resize(*len as usize, 0),
        }
    }

    /// Whether this operation decides the value of byte `at` (so the on-disk byte is not
    /// what the process sees).
    fn touches(&self, at: u64) -> bool {
        match self {
            Pending::Write { offset, bytes } => *offset <= at && at < offset + bytes.len() as u64,
            Pending::SetLen(len) => *len <= at,
        }
    }
}

/// Writes `data` at `offset`, zero-filling any gap; an empty write changes nothing.
/// The caller has checked that `offset + data.len()` fits in [`MAX_FILE_LEN`].
fn write_into(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let offset = offset as usize;
    if offset == bytes.len() {
        bytes.extend_from_slice(data);
        return;
    }
    let end = offset + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
}

/// How many bytes of a `len`-byte write at `offset` reach the disk when it is the last write
/// before a crash: all of them, or (half the time, when it spans two sectors or more) a
/// non-empty, strict prefix of its sectors.
fn torn_prefix(rng: &mut SeededRng, offset: u64, len: usize) -> usize {
    let first = offset / SECTOR_SIZE;
    let last = (offset + len as u64 - 1) / SECTOR_SIZE;
    let sectors = last - first + 1;
    if sectors < 2 || !rng.chance(0.5) {
        return len;
    }
    let kept = rng.in_range(1, sectors - 1);
    ((first + kept) * SECTOR_SIZE - offset) as usize
}

/// The same names the production disk accepts: plain names inside the directory.
fn check_name(name: &str) -> Result<(), DiskError> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(DiskError::io(
            name,
            "file names may not contain path separators",
        ));
    }
    Ok(())
}

/// Checks that a write of `len` bytes at `offset` keeps the file within [`MAX_FILE_LEN`].
fn check_extent(name: &str, offset: u64, len: usize) -> Result<(), DiskError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= MAX_FILE_LEN => Ok(()),
        _ => Err(DiskError::io(
            name,
            format!("a file on the simulated disk is limited to {MAX_FILE_LEN} bytes"),
        )),
    }
}

impl DiskImage {
    fn inode(&self, name: &str) -> Result<&Inode, DiskError> {
        check_name(name)?;
        let id = self
            .names
            .get(name)
            .ok_or_else(|| DiskError::NotFound(name.to_string()))?;
        Ok(self.inodes.get(id).expect("a named inode exists"))
    }

    fn inode_mut(&mut self, name: &str) -> Result<&mut Inode, DiskError> {
        check_name(name)?;
        let id = self
            .names
            .get(name)
            .ok_or_else(|| DiskError::NotFound(name.to_string()))?;
        Ok(self.inodes.get_mut(id).expect("a named inode exists"))
    }

    /// Drops an inode the volatile namespace no longer names, unless the durable one does.
    fn release(&mut self, id: InodeId) {
        if !self.durable_names.values().any(|&durable| durable == id) {
            self.inodes.remove(&id);
        }
    }

    fn write_at(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        check_extent(name, offset, data.len())?;
        let inode = self.inode_mut(name)?;
        if !data.is_empty() {
            write_into(&mut inode.volatile, offset, data);
            inode.pending.push(Pending::Write {
                offset,
                bytes: data.to_vec(),
            });
        }
        self.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self, name: &str) -> Result<(), DiskError> {
        check_name(name)?;
        let id = *self
            .names
            .get(name)
            .ok_or_else(|| DiskError::NotFound(name.to_string()))?;
        self.stats.syncs += 1;
        let failed = self.rng.chance(self.faults.sync_failure_ratio);
        let inode = self.inodes.get_mut(&id).expect("a named inode exists");
        if failed {
            self.stats.failed_syncs += 1;
            if !inode.pending.is_empty() {
                inode.lost = true;
                inode.pending.clear();
            }
            return Err(DiskError::SyncFailed(name.to_string()));
        }
        for operation in inode.pending.drain(..) {
            operation.apply(&mut inode.durable);
        }
        Ok(())
    }

    fn sync_directory(&mut self) -> Result<(), DiskError> {
        self.stats.syncs += 1;
        if self.rng.chance(self.faults.sync_failure_ratio) {
            self.stats.failed_syncs += 1;
            return Err(DiskError::SyncFailed(DIRECTORY.to_string()));
        }
        if self.durable_names != self.names {
            self.durable_names.clone_from(&self.names);
            let live: BTreeSet<InodeId> = self.names.values().copied().collect();
            self.inodes.retain(|id, _| live.contains(id));
        }
        Ok(())
    }

    fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport {
            namespace_reverted: self.names != self.durable_names,
            ..CrashReport::default()
        };
        for (name, id) in &self.durable_names {
            let inode = self
                .inodes
                .get_mut(id)
                .expect("a durably named inode exists");
            if inode.pending.is_empty() && !inode.lost {
                continue; // Its volatile bytes already are its durable bytes.
            }
            report.files_affected.push(name.clone());
            let pending = std::mem::take(&mut inode.pending);
            let applied = if self.faults.torn_writes && self.faults.targets(name) {
                self.rng.below(pending.len() as u64 + 1) as usize
            } else {
                0
            };
            for (index, operation) in pending.iter().take(applied).enumerate() {
                match operation {
                    Pending::Write { offset, bytes } if index + 1 == applied => {
                        let kept = torn_prefix(&mut self.rng, *offset, bytes.len());
                        if kept < bytes.len() {
                            report.writes_torn += 1;
                        }
                        write_into(&mut inode.durable, *offset, &bytes[..kept]);
                    }
                    operation => operation.apply(&mut inode.durable),
                }
            }
            report.writes_dropped += (pending.len() - applied) as u64;
            inode.volatile.clone_from(&inode.durable);
            inode.lost = false;
        }
        if report.namespace_reverted {
            self.names.clone_from(&self.durable_names);
            let live: BTreeSet<InodeId> = self.names.values().copied().collect();
            self.inodes.retain(|id, _| live.contains(id));
        }
        self.stats.crashes += 1;
        self.stats.torn_writes += report.writes_torn;
        report
    }

    fn rot(&mut self) -> Option<(String, u64)> {
        let candidates: Vec<(&String, InodeId)> = self
            .durable_names
            .iter()
            .filter(|(name, id)| self.faults.targets(name) && !self.inodes[id].durable.is_empty())
            .map(|(name, &id)| (name, id))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (name, id) = candidates[self.rng.below(candidates.len() as u64) as usize];
        let inode = self
            .inodes
            .get_mut(&id)
            .expect("a durably named inode exists");
        let bit = self.rng.below(inode.durable.len() as u64 * 8);
        let at = bit / 8;
        let (byte, mask) = (at as usize, 1u8 << (bit % 8));
        // The process sees the rot only where its view is the on-disk byte, not dirty data.
        let cached = inode.volatile.get(byte) == Some(&inode.durable[byte])
            && !inode.pending.iter().any(|operation| operation.touches(at));
        inode.durable[byte] ^= mask;
        if cached {
            inode.volatile[byte] ^= mask;
        }
        let name = name.clone();
        self.stats.rots += 1;
        Some((name, bit))
    }
}

impl SimDisk {
    /// An empty disk without faults; every random draw comes from `rng`.
    pub fn new(rng: SeededRng) -> Self {
        Self {
            image: Arc::new(Mutex::new(DiskImage {
                inodes: BTreeMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                next_inode: 0,
                faults: DiskFaults::default(),
                rng,
                stats: DiskStats::default(),
            })),
        }
    }

    fn image(&self) -> MutexGuard<'_, DiskImage> {
        // A panic while the lock was held (a failing node, caught by the simulator) leaves
        // the image consistent: every mutation completes before anything can panic.
        self.image.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the faults injected from now on.
    pub fn set_faults(&self, faults: DiskFaults) {
        self.image().faults = faults;
    }

    pub fn faults(&self) -> DiskFaults {
        self.image().faults.clone()
    }

    /// The power cut: everything not made durable is lost (see the module documentation).
    pub fn crash(&self) -> CrashReport {
        self.image().crash()
    }

    /// Flips one random bit of a random targeted, durably named, non-empty file, persistently;
    /// returns the file's durable name and the bit's offset in it, or `None` when no file
    /// qualifies.
    pub fn rot(&self) -> Option<(String, u64)> {
        self.image().rot()
    }

    /// Destroys the disk: every file and both namespaces are gone (a replaced drive).
    /// Faults and statistics remain.
    pub fn wipe(&self) {
        let mut image = self.image();
        image.inodes.clear();
        image.names.clear();
        image.durable_names.clear();
        image.stats.wipes += 1;
    }

    pub fn stats(&self) -> DiskStats {
        self.image().stats
    }

    /// Bytes the simulated disk holds in memory (file images and unsynced operations): what a
    /// memory measurement of the node must leave out, since a real disk holds it.
    pub fn held_bytes(&self) -> u64 {
        let image = self.image();
        image
            .inodes
            .values()
            .map(|inode| {
                let pending: usize = inode
                    .pending
                    .iter()
                    .map(|pending| match pending {
                        Pending::Write { bytes, .. } => bytes.capacity(),
                        Pending::SetLen(_) => 0,
                    })
                    .sum();
                (inode.volatile.capacity() + inode.durable.capacity() + pending) as u64
            })
            .sum()
    }

    /// The names a crash now would leave, sorted.
    pub fn file_names_durable(&self) -> Vec<String> {
        self.image().durable_names.keys().cloned().collect()
    }

    /// The bytes a crash now would leave in `name` (durable name), without torn writes;
    /// `None` when the name is not durable.
    pub fn read_durable(&self, name: &str) -> Option<Vec<u8>> {
        let image = self.image();
        let id = image.durable_names.get(name)?;
        Some(image.inodes[id].durable.clone())
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("SimDisk");
        // `try_lock`: formatting must not deadlock when the image is already locked.
        match self.image.try_lock() {
            Ok(image) => debug
                .field("files", &image.names.keys().collect::<Vec<_>>())
                .field("durable_files", &image.durable_names.len())
                .field("faults", &image.faults)
                .field("stats", &image.stats),
            Err(_) => debug.field("image", &"<locked>"),
        };
        debug.finish()
    }
}

impl Disk for SimDisk {
    fn create(&self, name: &str) -> Result<(), DiskError> {
        check_name(name)?;
        let mut image = self.image();
        if image.names.contains_key(name) {
            return Err(DiskError::AlreadyExists(name.to_string()));
        }
        let id = image.next_inode;
        image.next_inode += 1;
        image.inodes.insert(id, Inode::default());
        image.names.insert(name.to_string(), id);
        Ok(())
    }

    fn len(&self, name: &str) -> Result<Option<u64>, DiskError> {
        match self.image().inode(name) {
            Ok(inode) => Ok(Some(inode.volatile.len() as u64)),
            Err(DiskError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let mut image = self.image();
        let image = &mut *image;
        let inode = image.inode(name)?;
        let file_len = inode.volatile.len() as u64;
        let end = borough::seams::read_extent(name, offset, len, file_len)?;
        let mut data = inode.volatile[offset as usize..end as usize].to_vec();
        image.stats.reads += 1;
        if len > 0
            && image.faults.read_corruption_ratio > 0.0
            && image.faults.targets(name)
            && image.rng.chance(image.faults.read_corruption_ratio)
        {
            let bit = image.rng.below(len as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            image.stats.corrupted_reads += 1;
        }
        Ok(data)
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.image().write_at(name, offset, data)
    }

    fn append(&self, name: &str, data: &[u8]) -> Result<u64, DiskError> {
        let mut image = self.image();
        let offset = image.inode(name)?.volatile.len() as u64;
        image.write_at(name, offset, data)?;
        Ok(offset)
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), DiskError> {
        check_extent(name, len, 0)?;
        let mut image = self.image();
        let inode = image.inode_mut(name)?;
        inode.volatile.resize(len as usize, 0);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync(&self, name: &str) -> Result<(), DiskError> {
        self.image().sync(name)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        check_name(from)?;
        check_name(to)?;
        let mut image = self.image();
        let id = *image
            .names
            .get(from)
            .ok_or_else(|| DiskError::NotFound(from.to_string()))?;
        if from == to {
            return Ok(());
        }
        image.names.remove(from);
        if let Some(replaced) = image.names.insert(to.to_string(), id) {
            image.release(replaced);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), DiskError> {
        check_name(name)?;
        let mut image = self.image();
        if let Some(id) = image.names.remove(name) {
            image.release(id);
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, DiskError> {
        Ok(self.image().names.keys().cloned().collect())
    }

    fn sync_directory(&self) -> Result<(), DiskError> {
        self.image().sync_directory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(seed: u64) -> SimDisk {
        SimDisk::new(SeededRng::from_seed(seed))
    }

    /// A durable, empty file.
    fn durable_file(disk: &SimDisk, name: &str) {
        disk.create(name).unwrap();
        disk.sync(name).unwrap();
        disk.sync_directory().unwrap();
    }

    #[test]
    fn follows_the_disk_contract() {
        let disk = disk(1);
        assert_eq!(disk.len("a").unwrap(), None);
        assert_eq!(disk.read_all("a"), Err(DiskError::NotFound("a".into())));
        assert_eq!(disk.append("a", b"x"), Err(DiskError::NotFound("a".into())));
        assert_eq!(disk.sync("a"), Err(DiskError::NotFound("a".into())));
        assert_eq!(disk.rename("a", "b"), Err(DiskError::NotFound("a".into())));
        disk.remove("a").unwrap();
        assert!(disk.create("../a").is_err());

        disk.create("b").unwrap();
        disk.create("a").unwrap();
        assert_eq!(disk.create("a"), Err(DiskError::AlreadyExists("a".into())));
        assert_eq!(disk.list().unwrap(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(disk.append("a", b"hello").unwrap(), 0);
        assert_eq!(disk.append("a", b" world").unwrap(), 5);
        disk.write_at("a", 0, b"J").unwrap();
        assert_eq!(disk.read_all("a").unwrap(), b"Jello world");
        assert_eq!(disk.read_at("a", 6, 5).unwrap(), b"world");
        assert_eq!(disk.read_at("a", 11, 0).unwrap(), b"");
        assert_eq!(
            disk.read_at("a", 8, 10),
            Err(DiskError::ShortRead {
                name: "a".into(),
                offset: 8,
                len: 10,
                file_len: 11
            })
        );
        assert!(matches!(
            disk.read_at("a", u64::MAX, 2),
            Err(DiskError::ShortRead { .. })
        ));

        disk.write_at("b", 3, b"z").unwrap();
        assert_eq!(disk.read_all("b").unwrap(), b"\0\0\0z");
        disk.write_at("b", 10, b"").unwrap();
        assert_eq!(disk.len("b").unwrap(), Some(4));
        disk.truncate("b", 2).unwrap();
        assert_eq!(disk.read_all("b").unwrap(), b"\0\0");
        disk.truncate("b", 3).unwrap();
        assert_eq!(disk.read_all("b").unwrap(), b"\0\0\0");

        disk.rename("a", "b").unwrap();
        assert_eq!(disk.list().unwrap(), vec!["b".to_string()]);
        assert_eq!(disk.read_all("b").unwrap(), b"Jello world");
        disk.rename("b", "b").unwrap();
        assert_eq!(disk.read_all("b").unwrap(), b"Jello world");
        disk.remove("b").unwrap();
        assert_eq!(disk.list().unwrap(), Vec::<String>::new());
        assert_eq!(disk.stats().bytes_written, 13);
    }

    #[test]
    fn clones_share_the_image() {
        let node = disk(1);
        let world = node.clone();
        node.create("a").unwrap();
        node.append("a", b"abc").unwrap();
        assert_eq!(world.read_all("a").unwrap(), b"abc");
        world.crash();
        assert_eq!(node.len("a").unwrap(), None);
        assert!(format!("{node:?}").contains("SimDisk"));
    }

    #[test]
    fn crash_drops_unsynced_writes() {
        let disk = disk(1);
        durable_file(&disk, "log");
        disk.append("log", b"abc").unwrap();
        disk.sync("log").unwrap();
        disk.append("log", b"def").unwrap();
        disk.write_at("log", 0, b"X").unwrap();
        disk.truncate("log", 100).unwrap();
        let report = disk.crash();
        assert_eq!(disk.read_all("log").unwrap(), b"abc");
        assert_eq!(report.files_affected, vec!["log".to_string()]);
        assert_eq!(report.writes_dropped, 3);
        assert_eq!(report.writes_torn, 0);
        assert!(!report.namespace_reverted);
        // Nothing pending: a second crash changes nothing.
        assert_eq!(disk.crash(), CrashReport::default());
        assert_eq!(disk.stats().crashes, 2);
    }

    #[test]
    fn a_process_armed_to_die_at_sync_dies_there_and_its_writes_stay_unsynced() {
        let disk = disk(1);
        durable_file(&disk, "log");
        let process = ProcessDisk::new(disk.clone());
        process.append("log", b"abc").unwrap();
        process.sync("log").unwrap();
        // Disarmed, a sync goes through as usual.
        process.die_at_next_sync();
        process.disarm();
        process.append("log", b"def").unwrap();
        process.sync("log").unwrap();
        process.die_at_next_sync();
        process.append("log", b"ghi").unwrap();
        assert!(
            !process.died_at_sync(),
            "the writes before the sync go through"
        );
        assert!(process.sync("log").is_err());
        assert!(process.died_at_sync());
        assert!(process.read_all("log").is_err(), "the process is dead");
        assert!(process.sync_directory().is_err());
        // Only the power cut decides what the unsynced write left on the disk.
        disk.crash();
        assert_eq!(disk.read_all("log").unwrap(), b"abcdef");
    }

    #[test]
    fn synced_file_without_synced_directory_entry_is_lost() {
        let disk = disk(1);
        disk.create("a").unwrap();
        disk.append("a", b"data").unwrap();
        disk.sync("a").unwrap();
        assert!(disk.crash().namespace_reverted);
        assert_eq!(disk.len("a").unwrap(), None);
        assert!(disk.list().unwrap().is_empty());
        assert!(disk.file_names_durable().is_empty());
    }

    #[test]
    fn namespace_changes_are_durable_only_after_sync_directory() {
        let disk = disk(1);
        durable_file(&disk, "a");
        disk.append("a", b"old").unwrap();
        disk.sync("a").unwrap();

        disk.rename("a", "b").unwrap();
        disk.crash();
        assert_eq!(disk.list().unwrap(), vec!["a".to_string()]);
        assert_eq!(disk.read_all("a").unwrap(), b"old");

        disk.rename("a", "b").unwrap();
        disk.sync_directory().unwrap();
        disk.crash();
        assert_eq!(disk.list().unwrap(), vec!["b".to_string()]);
        assert_eq!(disk.read_all("b").unwrap(), b"old");

        // A removal not made durable is undone, and the old inode comes back with its own
        // bytes, not those of a new file created under the same name.
        disk.remove("b").unwrap();
        disk.create("b").unwrap();
        disk.append("b", b"new").unwrap();
        disk.sync("b").unwrap();
        assert_eq!(disk.read_all("b").unwrap(), b"new");
        assert_eq!(disk.read_durable("b").unwrap(), b"old");
        disk.crash();
        assert_eq!(disk.read_all("b").unwrap(), b"old");

        // A rename over an existing file replaces it durably after sync_directory.
        durable_file(&disk, "c");
        disk.rename("b", "c").unwrap();
        disk.sync_directory().unwrap();
        disk.crash();
        assert_eq!(disk.list().unwrap(), vec!["c".to_string()]);
        assert_eq!(disk.read_all("c").unwrap(), b"old");
        assert_eq!(disk.image().inodes.len(), 1);
    }

    #[test]
    fn failed_sync_loses_pending_data_even_after_a_later_successful_sync() {
        let disk = disk(1);
        durable_file(&disk, "log");
        disk.set_faults(DiskFaults {
            sync_failure_ratio: 1.0,
            ..DiskFaults::none()
        });
        disk.append("log", b"abc").unwrap();
        assert_eq!(disk.sync("log"), Err(DiskError::SyncFailed("log".into())));
        disk.create("other").unwrap();
        assert_eq!(
            disk.sync_directory(),
            Err(DiskError::SyncFailed(DIRECTORY.into()))
        );
        // Still visible to the process...
        assert_eq!(disk.read_all("log").unwrap(), b"abc");

        disk.set_faults(DiskFaults::none());
        disk.sync("log").unwrap();
        disk.append("log", b"def").unwrap();
        disk.sync("log").unwrap();
        assert_eq!(disk.read_all("log").unwrap(), b"abcdef");
        // ...but never durable: a retried sync does not fix it.
        assert_eq!(disk.read_durable("log").unwrap(), b"\0\0\0def");
        let report = disk.crash();
        assert_eq!(report.files_affected, vec!["log".to_string()]);
        assert!(report.namespace_reverted);
        assert_eq!(disk.read_all("log").unwrap(), b"\0\0\0def");
        assert_eq!(disk.list().unwrap(), vec!["log".to_string()]);
        let stats = disk.stats();
        assert_eq!((stats.syncs, stats.failed_syncs), (6, 2));
    }

    #[test]
    fn torn_write_leaves_a_prefix_at_sector_granularity() {
        let data: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut lengths = BTreeSet::new();
        for seed in 0..200 {
            let disk = disk(seed);
            durable_file(&disk, "a.wal");
            durable_file(&disk, "a.db");
            disk.append("a.wal", b"head").unwrap();
            disk.sync("a.wal").unwrap();
            disk.set_faults(DiskFaults {
                torn_writes: true,
                target_suffixes: vec![".wal".into()],
                ..DiskFaults::none()
            });
            // Starts mid-sector: sectors [4, 512), [512, 1024), ..., [2048, 2052).
            disk.append("a.wal", &data).unwrap();
            disk.append("a.db", &data).unwrap();
            let report = disk.crash();
            let after = disk.read_all("a.wal").unwrap();
            assert_eq!(&after[..4], b"head");
            let len = after.len();
            assert!(
                len == 4 || len == 2052 || len.is_multiple_of(512),
                "seed {seed}: {len}"
            );
            assert_eq!(&after[4..], &data[..len - 4]);
            assert_eq!(report.writes_torn, u64::from(len != 4 && len != 2052));
            // Untargeted files never see a partial write.
            assert_eq!(disk.len("a.db").unwrap(), Some(0));
            lengths.insert(len);
        }
        // Every outcome occurs: dropped, each torn prefix, whole.
        assert_eq!(
            lengths.into_iter().collect::<Vec<_>>(),
            vec![4, 512, 1024, 1536, 2048, 2052]
        );
    }

    #[test]
    fn torn_writes_apply_a_prefix_of_the_pending_operations() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..100 {
            let disk = disk(seed);
            durable_file(&disk, "a");
            disk.set_faults(DiskFaults {
                torn_writes: true,
                ..DiskFaults::none()
            });
            disk.append("a", b"1").unwrap();
            disk.append("a", b"2").unwrap();
            disk.truncate("a", 1).unwrap();
            disk.append("a", b"3").unwrap();
            disk.crash();
            outcomes.insert(disk.read_all("a").unwrap());
        }
        let expected: BTreeSet<Vec<u8>> = [&b""[..], b"1", b"12", b"13"]
            .iter()
            .map(|bytes| bytes.to_vec())
            .collect();
        assert_eq!(outcomes, expected);
    }

    #[test]
    fn read_corruption_is_transient_and_only_on_targeted_files() {
        let disk = disk(1);
        let data = vec![0x5a; 64];
        for name in ["a.wal", "a.db"] {
            durable_file(&disk, name);
            disk.append(name, &data).unwrap();
            disk.sync(name).unwrap();
        }
        disk.set_faults(DiskFaults {
            read_corruption_ratio: 1.0,
            target_suffixes: vec![".wal".into()],
            ..DiskFaults::none()
        });
        for _ in 0..20 {
            let read = disk.read_all("a.wal").unwrap();
            let flipped: u32 = read
                .iter()
                .zip(&data)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            assert_eq!(flipped, 1);
            assert_eq!(disk.read_all("a.db").unwrap(), data);
        }
        assert_eq!(disk.stats().corrupted_reads, 20);
        assert_eq!(disk.stats().reads, 40);
        disk.set_faults(DiskFaults::none());
        assert_eq!(disk.read_all("a.wal").unwrap(), data);
        disk.crash();
        assert_eq!(disk.read_all("a.wal").unwrap(), data);
    }

    #[test]
    fn rot_is_persistent_and_only_on_targeted_files() {
        let disk = disk(1);
        assert_eq!(disk.rot(), None);
        durable_file(&disk, "a.wal");
        durable_file(&disk, "b.wal");
        durable_file(&disk, "a.db");
        disk.append("a.db", b"database").unwrap();
        disk.sync("a.db").unwrap();
        disk.set_faults(DiskFaults {
            target_suffixes: vec![".wal".into()],
            ..DiskFaults::none()
        });
        // Targeted files are all empty.
        assert_eq!(disk.rot(), None);
        disk.append("b.wal", &[0u8; 16]).unwrap();
        disk.sync("b.wal").unwrap();
        let (name, bit) = disk.rot().unwrap();
        assert_eq!(name, "b.wal");
        let mut expected = vec![0u8; 16];
        expected[(bit / 8) as usize] ^= 1 << (bit % 8);
        assert_eq!(disk.read_all("b.wal").unwrap(), expected);
        disk.crash();
        assert_eq!(disk.read_all("b.wal").unwrap(), expected);
        assert_eq!(disk.read_all("a.db").unwrap(), b"database");

        // A byte dirty in memory keeps its value; the rot is overwritten at the next sync.
        disk.write_at("b.wal", 0, &[0xff; 16]).unwrap();
        let (_, bit) = disk.rot().unwrap();
        assert_eq!(disk.read_all("b.wal").unwrap(), vec![0xff; 16]);
        assert_ne!(disk.read_durable("b.wal").unwrap(), expected, "bit {bit}");
        disk.sync("b.wal").unwrap();
        disk.crash();
        assert_eq!(disk.read_all("b.wal").unwrap(), vec![0xff; 16]);
        assert_eq!(disk.stats().rots, 2);
    }

    #[test]
    fn wipe_destroys_everything() {
        let disk = disk(1);
        durable_file(&disk, "a");
        disk.append("a", b"x").unwrap();
        disk.create("b").unwrap();
        disk.wipe();
        assert!(disk.list().unwrap().is_empty());
        assert!(disk.file_names_durable().is_empty());
        disk.crash();
        assert!(disk.list().unwrap().is_empty());
        disk.create("a").unwrap();
        assert_eq!(disk.len("a").unwrap(), Some(0));
        assert_eq!(disk.stats().wipes, 1);
    }

    /// Everything a run observes: final files, the results of every call, the statistics.
    type Outcome = (Vec<(String, Vec<u8>)>, Vec<String>, DiskStats);

    /// A workload under every fault.
    fn run(seed: u64) -> Outcome {
        let disk = disk(seed);
        disk.set_faults(DiskFaults {
            read_corruption_ratio: 0.3,
            sync_failure_ratio: 0.2,
            torn_writes: true,
            target_suffixes: Vec::new(),
        });
        let mut events = Vec::new();
        let mut files = Vec::new();
        for round in 0..6u8 {
            for name in ["a.wal", "b.db", "c.wal"] {
                let _ = disk.create(name);
                let payload = vec![round.wrapping_mul(37).wrapping_add(name.len() as u8); 700];
                disk.append(name, &payload).unwrap();
                disk.write_at(name, 100, &payload[..300]).unwrap();
                events.push(format!("{:?}", disk.sync(name)));
                events.push(format!("{:?}", disk.read_at(name, 0, 64)));
            }
            events.push(format!("{:?}", disk.sync_directory()));
            events.push(format!("{:?}", disk.rot()));
            events.push(format!("{:?}", disk.crash()));
        }
        for name in disk.list().unwrap() {
            let bytes = disk.read_all(&name).unwrap();
            files.push((name, bytes));
        }
        events.extend(disk.file_names_durable());
        (files, events, disk.stats())
    }

    #[test]
    fn same_seed_same_outcomes() {
        for seed in 0..8 {
            assert_eq!(run(seed), run(seed));
        }
        let outcomes: BTreeSet<_> = (0..8).map(|seed| format!("{:?}", run(seed))).collect();
        assert!(outcomes.len() > 1, "faults must depend on the seed");
    }
}

/// One process's handle on a [`SimDisk`]. A power loss kills the process before its memory is
/// freed, yet dropping the node runs destructors (redb's writes its allocator state on drop):
/// `kill` makes every later operation through this handle fail, so nothing a dead process
/// "does" reaches the disk, and the restarted process gets a fresh handle.
#[derive(Clone, Debug)]
pub struct ProcessDisk {
    disk: SimDisk,
    alive: Arc<std::sync::atomic::AtomicBool>,
    /// The crash-during-sync fault: the next `sync` or `sync_directory` kills the process
    /// instead of syncing (the power goes while the fsync is in flight).
    die_at_sync: Arc<std::sync::atomic::AtomicBool>,
    died_at_sync: Arc<std::sync::atomic::AtomicBool>,
}

impl ProcessDisk {
    pub fn new(disk: SimDisk) -> Self {
        Self {
            disk,
            alive: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            die_at_sync: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            died_at_sync: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub fn kill(&self) {
        self.alive
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Arms the crash-during-sync fault (see the field).
    pub fn die_at_next_sync(&self) {
        self.die_at_sync
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn disarm(&self) {
        self.die_at_sync
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the process died at a sync the fault took.
    pub fn died_at_sync(&self) -> bool {
        self.died_at_sync.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks for the armed fault before a sync: the process dies, nothing is synced.
    fn sync_check(&self, name: &str) -> Result<&SimDisk, DiskError> {
        let disk = self.check(name)?;
        if self
            .die_at_sync
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.kill();
            self.died_at_sync
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(DiskError::io(name, "the power went during the fsync"));
        }
        Ok(disk)
    }

    fn check(&self, name: &str) -> Result<&SimDisk, DiskError> {
        if self.alive.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(&self.disk)
        } else {
            Err(DiskError::io(name, "the process is dead"))
        }
    }
}

impl Disk for ProcessDisk {
    fn create(&self, name: &str) -> Result<(), DiskError> {
        self.check(name)?.create(name)
    }
    fn len(&self, name: &str) -> Result<Option<u64>, DiskError> {
        self.check(name)?.len(name)
    }
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        self.check(name)?.read_at(name, offset, len)
    }
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.check(name)?.write_at(name, offset, data)
    }
    fn append(&self, name: &str, data: &[u8]) -> Result<u64, DiskError> {
        self.check(name)?.append(name, data)
    }
    fn truncate(&self, name: &str, len: u64) -> Result<(), DiskError> {
        self.check(name)?.truncate(name, len)
    }
    fn sync(&self, name: &str) -> Result<(), DiskError> {
        self.sync_check(name)?.sync(name)
    }
    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        self.check(from)?.rename(from, to)
    }
    fn remove(&self, name: &str) -> Result<(), DiskError> {
        self.check(name)?.remove(name)
    }
    fn list(&self) -> Result<Vec<String>, DiskError> {
        self.check("<directory>")?.list()
    }
    fn sync_directory(&self) -> Result<(), DiskError> {
        self.sync_check("<directory>")?.sync_directory()
    }
}
