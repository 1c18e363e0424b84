//! Real files behind the `Disk` seam: one directory, `fsync` on files and on the directory.
//!
//! File names are plain names inside the directory (no separators), so a name can never
//! escape the node's data directory. Open handles are cached; the lock only serialises
//! access from the embedded engine's backend, the core drives the disk from one thread.

use crate::seams::{Disk, DiskError};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct FileDisk {
    directory: PathBuf,
    handles: Mutex<BTreeMap<String, File>>,
}

impl FileDisk {
    /// Opens (creating if needed) the data directory.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, DiskError> {
        let directory = directory.as_ref().to_path_buf();
        fs::create_dir_all(&directory)
            .map_err(|error| DiskError::io(&directory.display().to_string(), error))?;
        Ok(Self {
            directory,
            handles: Mutex::new(BTreeMap::new()),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf, DiskError> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(DiskError::io(
                name,
                "file names may not contain path separators",
            ));
        }
        Ok(self.directory.join(name))
    }

    fn with_handle<T>(
        &self,
        name: &str,
        action: impl FnOnce(&mut File) -> std::io::Result<T>,
    ) -> Result<T, DiskError> {
        let path = self.path(name)?;
        let mut handles = self.handles.lock().expect("disk lock poisoned");
        if !handles.contains_key(name) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|error| map_error(name, error))?;
            handles.insert(name.to_string(), file);
        }
        let file = handles.get_mut(name).expect("inserted above");
        action(file).map_err(|error| map_error(name, error))
    }

    /// A duplicate of `name`'s handle, to sync it without holding the disk's lock (on
    /// another thread, say); sync it with [`sync_duplicate`].
    pub fn duplicate_handle(&self, name: &str) -> Result<File, DiskError> {
        self.with_handle(name, |file| file.try_clone())
    }

    fn forget(&self, name: &str) {
        self.handles
            .lock()
            .expect("disk lock poisoned")
            .remove(name);
    }
}

/// Makes the data of `file` (a duplicate handle of `name`) durable.
pub fn sync_duplicate(name: &str, file: &File) -> Result<(), DiskError> {
    file.sync_data()
        .map_err(|_| DiskError::SyncFailed(name.to_string()))
}

fn map_error(name: &str, error: std::io::Error) -> DiskError {
    match error.kind() {
        ErrorKind::NotFound => DiskError::NotFound(name.to_string()),
        ErrorKind::AlreadyExists => DiskError::AlreadyExists(name.to_string()),
        _ => DiskError::io(name, error),
    }
}

impl Disk for FileDisk {
    fn create(&self, name: &str) -> Result<(), DiskError> {
        let path = self.path(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|error| map_error(name, error))?;
        self.handles
            .lock()
            .expect("disk lock poisoned")
            .insert(name.to_string(), file);
        Ok(())
    }

    fn len(&self, name: &str) -> Result<Option<u64>, DiskError> {
        match fs::metadata(self.path(name)?) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(DiskError::io(name, error)),
        }
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let file_len = self
            .len(name)?
            .ok_or_else(|| DiskError::NotFound(name.into()))?;
        crate::seams::read_extent(name, offset, len, file_len)?;
        self.with_handle(name, |file| {
            file.seek(SeekFrom::Start(offset))?;
            let mut buffer = vec![0; len];
            file.read_exact(&mut buffer)?;
            Ok(buffer)
        })
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.with_handle(name, |file| {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(data)
        })
    }

    fn append(&self, name: &str, data: &[u8]) -> Result<u64, DiskError> {
        self.with_handle(name, |file| {
            let offset = file.seek(SeekFrom::End(0))?;
            file.write_all(data)?;
            Ok(offset)
        })
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), DiskError> {
        self.with_handle(name, |file| file.set_len(len))
    }

    fn sync(&self, name: &str) -> Result<(), DiskError> {
        // Outside the lock: the engine's reads and writes of other files go on meanwhile.
        let file = self.duplicate_handle(name)?;
        sync_duplicate(name, &file)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        let (from_path, to_path) = (self.path(from)?, self.path(to)?);
        self.forget(from);
        self.forget(to);
        fs::rename(from_path, to_path).map_err(|error| map_error(from, error))
    }

    fn remove(&self, name: &str) -> Result<(), DiskError> {
        let path = self.path(name)?;
        self.forget(name);
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(error) => Err(DiskError::io(name, error)),
        }
    }

    fn list(&self) -> Result<Vec<String>, DiskError> {
        let directory = self.directory.display().to_string();
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.directory).map_err(|e| DiskError::io(&directory, e))? {
            let entry = entry.map_err(|error| DiskError::io(&directory, error))?;
            if entry
                .file_type()
                .map(|kind| kind.is_file())
                .unwrap_or(false)
            {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_directory(&self) -> Result<(), DiskError> {
        let directory = self.directory.display().to_string();
        File::open(&self.directory)
            .and_then(|handle| handle.sync_all())
            .map_err(|_| DiskError::SyncFailed(directory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("borough-file-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        directory
    }

    #[test]
    fn files_round_trip() {
        let directory = scratch("round-trip");
        let disk = FileDisk::open(&directory).unwrap();
        disk.create("a").unwrap();
        assert_eq!(disk.create("a"), Err(DiskError::AlreadyExists("a".into())));
        assert_eq!(disk.append("a", b"hello").unwrap(), 0);
        assert_eq!(disk.append("a", b" world").unwrap(), 5);
        disk.write_at("a", 0, b"J").unwrap();
        disk.sync("a").unwrap();
        assert_eq!(disk.read_all("a").unwrap(), b"Jello world");
        assert!(matches!(
            disk.read_at("a", 8, 10),
            Err(DiskError::ShortRead { .. })
        ));
        assert!(
            matches!(
                disk.read_at("a", u64::MAX, 2),
                Err(DiskError::ShortRead { .. })
            ),
            "an offset that overflows is a short read, not a panic"
        );
        disk.truncate("a", 5).unwrap();
        disk.rename("a", "b").unwrap();
        disk.sync_directory().unwrap();
        assert_eq!(disk.list().unwrap(), vec!["b".to_string()]);
        assert_eq!(disk.read_all("b").unwrap(), b"Jello");
        disk.remove("b").unwrap();
        disk.remove("b").unwrap();
        assert_eq!(disk.len("b").unwrap(), None);
        assert!(disk.path("../escape").is_err());
        fs::remove_dir_all(directory).unwrap();
    }
}
