//! redb's `StorageBackend` over the `Disk` seam, so the embedded engine's file is the
//! simulator's to crash, tear and corrupt like any other.
//!
//! Invariants redb relies on (redb 2.6 `StorageBackend` contract): `set_len` zero-extends,
//! reads past the end are errors, and `sync_data` is a write barrier. We keep the barrier by
//! always syncing fully, even when redb says `eventual`: the seam has no cheaper barrier.

use crate::seams::{Disk, DiskError, SharedDisk};
use redb::StorageBackend;
use std::io;

/// Length of the magic number redb writes at the start of its file once creation completes.
const REDB_MAGIC_BYTES: u64 = 9;

/// Makes sure the database file `name` exists, durably, and that redb can open or create it.
///
/// redb creates a database by writing and syncing its structures with the magic number
/// zeroed, then the magic number: a crash or failed sync in between leaves a file redb refuses
/// forever (`InvalidData`). Such a file never held anything of ours, since our stores write
/// only after a successful open, so it is started over. Only an all-zero magic number
/// qualifies: anything else may be a real database with a damaged header, which must not be
/// wiped.
pub fn prepare_database_file(disk: &dyn Disk, name: &str) -> Result<(), DiskError> {
    let Some(len) = disk.len(name)? else {
        disk.create(name)?;
        disk.sync_directory()?;
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    let magic = disk.read_at(name, 0, len.min(REDB_MAGIC_BYTES) as usize)?;
    if magic.iter().all(|&byte| byte == 0) {
        tracing::warn!(
            file = name,
            len,
            "the database's creation never completed: starting it over"
        );
        disk.truncate(name, 0)?;
        disk.sync(name)?;
    }
    Ok(())
}

#[derive(Debug)]
pub struct DiskBackend {
    disk: SharedDisk,
    name: String,
}

impl DiskBackend {
    /// A backend over the existing file `name`; the caller creates it (durably) first.
    pub fn new(disk: SharedDisk, name: impl Into<String>) -> Self {
        Self {
            disk,
            name: name.into(),
        }
    }
}

impl StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.disk.len(&self.name)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", self.name),
            )
        })
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let bytes = self.disk.read_at(&self.name, offset, out.len())?;
        out.copy_from_slice(&bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        Ok(self.disk.truncate(&self.name, len)?)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(self.disk.sync(&self.name)?)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        Ok(self.disk.write_at(&self.name, offset, data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::Disk;
    use crate::storage::test_disk::TestDisk;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const TABLE: TableDefinition<&str, u64> = TableDefinition::new("numbers");

    #[test]
    fn contract_basics() {
        let disk = TestDisk::new();
        disk.create("db").unwrap();
        let backend = DiskBackend::new(disk.clone(), "db");
        assert_eq!(backend.len().unwrap(), 0);
        backend.set_len(8).unwrap();
        let mut eight = [1u8; 8];
        backend.read(0, &mut eight).unwrap();
        assert_eq!(eight, [0; 8]);
        backend.write(2, b"ab").unwrap();
        let mut three = [0u8; 3];
        backend.read(1, &mut three).unwrap();
        assert_eq!(&three, b"\0ab");
        assert!(
            backend.read(6, &mut [0u8; 4]).is_err(),
            "reads past the end fail"
        );
        backend.set_len(3).unwrap();
        assert_eq!(backend.len().unwrap(), 3);
        backend.sync_data().unwrap();
        assert_eq!(disk.syncs("db"), 1);
        let missing = DiskBackend::new(disk, "missing");
        assert_eq!(missing.len().unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn redb_commits_survive_a_crash() {
        let disk = TestDisk::new();
        disk.create("db").unwrap();
        disk.sync_directory().unwrap();
        let database = Database::builder()
            .create_with_backend(DiskBackend::new(disk.clone(), "db"))
            .unwrap();
        let transaction = database.begin_write().unwrap();
        transaction
            .open_table(TABLE)
            .unwrap()
            .insert("a", 1)
            .unwrap();
        transaction.commit().unwrap();
        let disk = disk.crash();
        drop(database);
        let database = Database::builder()
            .create_with_backend(DiskBackend::new(disk, "db"))
            .unwrap();
        let transaction = database.begin_read().unwrap();
        let table = transaction.open_table(TABLE).unwrap();
        assert_eq!(table.get("a").unwrap().unwrap().value(), 1);
    }
}
