//! The `Disk` seam: named files in one node's data directory.
//!
//! The contract is the one a POSIX file system gives a careful program, and the simulator
//! enforces exactly that much:
//! - `write_at` / `append` / `truncate` change the file at once for readers of this process,
//!   but survive a crash only after `sync` of that file returns `Ok`;
//! - `create`, `rename` and `remove` survive a crash only after `sync_directory` returns `Ok`;
//! - a failed `sync` means the data may or may not be durable: the caller must stop writing
//!   (poison its store) rather than retry and pretend;
//! - reads may return corrupted bytes: everything durable carries its own checksum.
//!
//! The trait is object safe and `Send + Sync` because the embedded engine (redb) requires its
//! storage backend to be; the core itself still drives it from one thread.

use std::fmt;
use std::sync::Arc;

/// A disk as the core holds it: shared by the event log and the embedded engine's backend.
pub type SharedDisk = Arc<dyn Disk>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("file not found: {0}")]
    NotFound(String),
    #[error("file already exists: {0}")]
    AlreadyExists(String),
    #[error("read past the end of {name}: offset {offset} + {len} > {file_len}")]
    ShortRead {
        name: String,
        offset: u64,
        len: usize,
        file_len: u64,
    },
    #[error("fsync failed on {0}")]
    SyncFailed(String),
    #[error("i/o error on {name}: {message}")]
    Io { name: String, message: String },
}

impl DiskError {
    pub fn io(name: &str, error: impl fmt::Display) -> Self {
        DiskError::Io {
            name: name.to_string(),
            message: error.to_string(),
        }
    }
}

/// Checks that `len` bytes at `offset` lie inside a file of `file_len` bytes and returns where
/// the read ends. Every `Disk` uses it, so all of them refuse the same reads (overflow included).
pub fn read_extent(name: &str, offset: u64, len: usize, file_len: u64) -> Result<u64, DiskError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= file_len => Ok(end),
        _ => Err(DiskError::ShortRead {
            name: name.to_string(),
            offset,
            len,
            file_len,
        }),
    }
}

impl From<DiskError> for std::io::Error {
    fn from(error: DiskError) -> Self {
        let kind = match error {
            DiskError::NotFound(_) => std::io::ErrorKind::NotFound,
            DiskError::AlreadyExists(_) => std::io::ErrorKind::AlreadyExists,
            DiskError::ShortRead { .. } => std::io::ErrorKind::UnexpectedEof,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, error)
    }
}

pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Creates an empty file; an existing file is an error.
    fn create(&self, name: &str) -> Result<(), DiskError>;
    /// The file's current length, or `None` when it does not exist.
    fn len(&self, name: &str) -> Result<Option<u64>, DiskError>;
    /// Reads exactly `len` bytes at `offset`.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, DiskError>;
    /// Writes `data` at `offset`, zero-filling any gap past the end.
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Appends `data` and returns the offset it starts at.
    fn append(&self, name: &str, data: &[u8]) -> Result<u64, DiskError>;
    /// Shrinks or zero-extends the file to `len`.
    fn truncate(&self, name: &str, len: u64) -> Result<(), DiskError>;
    /// Makes the file's data durable.
    fn sync(&self, name: &str) -> Result<(), DiskError>;
    /// Renames, replacing any file at `to`.
    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, name: &str) -> Result<(), DiskError>;
    /// The names of all files, sorted.
    fn list(&self) -> Result<Vec<String>, DiskError>;
    /// Makes creations, renames and removals durable.
    fn sync_directory(&self) -> Result<(), DiskError>;

    /// Reads a whole file.
    fn read_all(&self, name: &str) -> Result<Vec<u8>, DiskError> {
        match self.len(name)? {
            None => Err(DiskError::NotFound(name.to_string())),
            Some(len) => self.read_at(name, 0, len as usize),
        }
    }
}
