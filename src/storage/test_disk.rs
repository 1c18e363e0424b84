//! An in-memory `Disk` for the unit tests of the stores, with the seam's crash model.
//!
//! Files are inodes named by a directory. Invariants, as the `Disk` contract states them:
//! file data survives `crash()` only as of the file's last successful `sync`, and names
//! (create, rename, remove) survive only as of the last successful `sync_directory`.
//! Injected faults: failing syncs, and bit flips on read (transient, `times` reads long) or
//! on the stored bytes themselves (persistent). The simulator has the full fault model; this
//! is the small local fake the design asks unit tests to use.

use crate::seams::{Disk, DiskError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct TestDisk {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Set once the disk has crashed: the process that held it is gone, so it does nothing.
    dead: bool,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    directory: BTreeMap<String, u64>,
    durable_directory: BTreeMap<String, u64>,
    fail_syncs: bool,
    /// Syncs (of files or the directory) that still succeed before they all start failing.
    syncs_until_failure: Option<u64>,
    read_flips: Vec<ReadFlip>,
    syncs_by_name: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug)]
struct ReadFlip {
    name: String,
    offset: u64,
    remaining_reads: u32,
}

impl TestDisk {
    pub fn new() -> Arc<TestDisk> {
        Arc::new(TestDisk::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("test disk lock poisoned")
    }

    /// Simulates power loss: returns the disk a restarted process finds, and makes this one
    /// inert so the crashed process's leftovers (destructors) cannot touch the survivor.
    pub fn crash(&self) -> Arc<TestDisk> {
        let mut state = self.lock();
        state.dead = true;
        let mut survivor = State::default();
        for (name, inode) in &state.durable_directory {
            let synced = state.inodes[inode].synced.clone();
            survivor.inodes.insert(
                *inode,
                Inode {
                    data: synced.clone(),
                    synced,
                },
            );
            survivor.directory.insert(name.clone(), *inode);
        }
        survivor.durable_directory = survivor.directory.clone();
        survivor.next_inode = state.next_inode;
        Arc::new(TestDisk {
            state: Mutex::new(survivor),
        })
    }

    pub fn fail_syncs(&self, fail: bool) {
        let mut state = self.lock();
        state.fail_syncs = fail;
        state.syncs_until_failure = None;
    }

    /// Lets `successes` more syncs succeed, then fails every sync.
    pub fn fail_syncs_after(&self, successes: u64) {
        self.lock().syncs_until_failure = Some(successes);
    }

    /// The next `times` reads of `name` that cover `offset` see that byte with a bit flipped.
    pub fn flip_on_read(&self, name: &str, offset: u64, times: u32) {
        self.lock().read_flips.push(ReadFlip {
            name: name.to_string(),
            offset,
            remaining_reads: times,
        });
    }

    /// Flips a bit of the stored (and synced) bytes: corruption at rest.
    pub fn corrupt_at_rest(&self, name: &str, offset: u64) {
        let mut state = self.lock();
        let inode = state.directory[name];
        let inode = state
            .inodes
            .get_mut(&inode)
            .expect("directory names live inodes");
        inode.data[offset as usize] ^= 0x10;
        inode.synced[offset as usize] ^= 0x10;
    }

    /// Successful syncs of files whose name starts with `prefix`.
    pub fn syncs(&self, prefix: &str) -> u64 {
        self.lock()
            .syncs_by_name
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }
}

impl State {
    fn check_alive(&self, name: &str) -> Result<(), DiskError> {
        if self.dead {
            return Err(DiskError::io(name, "the disk crashed"));
        }
        Ok(())
    }

    /// Whether the next sync fails, counting it against `syncs_until_failure`.
    fn sync_fails(&mut self) -> bool {
        match &mut self.syncs_until_failure {
            Some(0) => self.fail_syncs = true,
            Some(remaining) => *remaining -= 1,
            None => {}
        }
        self.fail_syncs
    }

    fn inode(&mut self, name: &str) -> Result<&mut Inode, DiskError> {
        self.check_alive(name)?;
        let inode = *self
            .directory
            .get(name)
            .ok_or_else(|| DiskError::NotFound(name.to_string()))?;
        Ok(self
            .inodes
            .get_mut(&inode)
            .expect("directory names live inodes"))
    }
}

impl Disk for TestDisk {
    fn create(&self, name: &str) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.check_alive(name)?;
        if state.directory.contains_key(name) {
            return Err(DiskError::AlreadyExists(name.to_string()));
        }
        let inode = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(inode, Inode::default());
        state.directory.insert(name.to_string(), inode);
        Ok(())
    }

    fn len(&self, name: &str) -> Result<Option<u64>, DiskError> {
        let mut state = self.lock();
        state.check_alive(name)?;
        if !state.directory.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(state.inode(name)?.data.len() as u64))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let mut state = self.lock();
        let data = &state.inode(name)?.data;
        let file_len = data.len() as u64;
        crate::seams::read_extent(name, offset, len, file_len)?;
        let mut bytes = data[offset as usize..offset as usize + len].to_vec();
        for flip in &mut state.read_flips {
            let covered = flip.offset >= offset && flip.offset < offset + len as u64;
            if flip.name == name && covered && flip.remaining_reads > 0 {
                flip.remaining_reads -= 1;
                bytes[(flip.offset - offset) as usize] ^= 0x01;
            }
        }
        Ok(bytes)
    }

    fn write_at(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        let mut state = self.lock();
        let data = &mut state.inode(name)?.data;
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    fn append(&self, name: &str, bytes: &[u8]) -> Result<u64, DiskError> {
        let mut state = self.lock();
        let data = &mut state.inode(name)?.data;
        let offset = data.len() as u64;
        data.extend_from_slice(bytes);
        Ok(offset)
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.inode(name)?.data.resize(len as usize, 0);
        Ok(())
    }

    fn sync(&self, name: &str) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.check_alive(name)?;
        if state.sync_fails() {
            return Err(DiskError::SyncFailed(name.to_string()));
        }
        let inode = state.inode(name)?;
        inode.synced = inode.data.clone();
        *state.syncs_by_name.entry(name.to_string()).or_default() += 1;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.check_alive(from)?;
        let inode = state
            .directory
            .remove(from)
            .ok_or_else(|| DiskError::NotFound(from.to_string()))?;
        state.directory.insert(to.to_string(), inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.check_alive(name)?;
        state.directory.remove(name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, DiskError> {
        let state = self.lock();
        state.check_alive("<directory>")?;
        Ok(state.directory.keys().cloned().collect())
    }

    fn sync_directory(&self) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.check_alive("<directory>")?;
        if state.sync_fails() {
            return Err(DiskError::SyncFailed("<directory>".to_string()));
        }
        state.durable_directory = state.directory.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_data_and_durable_names() {
        let disk = TestDisk::new();
        disk.create("kept").unwrap();
        disk.append("kept", b"durable").unwrap();
        disk.sync("kept").unwrap();
        disk.sync_directory().unwrap();
        disk.append("kept", b" volatile").unwrap();
        disk.create("lost").unwrap();
        disk.sync("lost").unwrap();
        let survivor = disk.crash();
        assert_eq!(survivor.list().unwrap(), vec!["kept".to_string()]);
        assert_eq!(survivor.read_all("kept").unwrap(), b"durable");
        assert!(
            disk.append("kept", b"x").is_err(),
            "a crashed disk is inert"
        );
    }

    #[test]
    fn read_flips_are_transient_and_failed_syncs_keep_nothing() {
        let disk = TestDisk::new();
        disk.create("f").unwrap();
        disk.append("f", b"abc").unwrap();
        disk.flip_on_read("f", 1, 1);
        assert_eq!(disk.read_all("f").unwrap(), b"acc");
        assert_eq!(disk.read_all("f").unwrap(), b"abc");
        disk.sync_directory().unwrap();
        disk.fail_syncs(true);
        assert_eq!(disk.sync("f"), Err(DiskError::SyncFailed("f".into())));
        assert_eq!(disk.crash().read_all("f").unwrap(), b"");
    }
}
