//! Every file access of the log goes through these two small traits, so the same log code runs
//! on real files ([`crate::fs`]) and on the fault-injecting in-memory disk ([`crate::fault`])
//! that the tests and the simulator use.

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The device is full (ENOSPC / EDQUOT).
    #[error("no space left on the device")]
    NoSpace,
    /// A read went past the end of the file.
    #[error(
        "read of {len} bytes at offset {offset} is past the end of the file ({file_len} bytes)"
    )]
    ShortRead {
        /// Offset asked for.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The file's length.
        file_len: u64,
    },
    /// The named file does not exist.
    #[error("file {0} does not exist")]
    NotFound(String),
    /// Any other IO error, with the OS's words.
    #[error("{0}")]
    Io(String),
}

/// One file: positional reads and writes, length, and durability.
pub trait Storage {
    /// Current length in bytes.
    fn len(&self) -> Result<u64, StorageError>;
    /// Whether the file is empty.
    fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; a read past the end is [`StorageError::ShortRead`].
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
    /// Writes all of `data` at `offset` (not durable until [`Storage::sync`]).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Sets the length (growing fills with zeros).
    fn set_len(&mut self, len: u64) -> Result<(), StorageError>;
    /// Makes every write so far durable (fdatasync).
    fn sync(&mut self) -> Result<(), StorageError>;
}

/// A directory of files.
pub trait Directory {
    /// The file type.
    type File: Storage;
    /// File names, sorted.
    fn list(&self) -> Result<Vec<String>, StorageError>;
    /// Opens an existing file.
    fn open(&mut self, name: &str) -> Result<Self::File, StorageError>;
    /// Creates a new, empty file (fails if it exists).
    fn create(&mut self, name: &str) -> Result<Self::File, StorageError>;
    /// Removes a file.
    fn remove(&mut self, name: &str) -> Result<(), StorageError>;
    /// Makes creations, removals and renames durable (fsync of the directory).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Replaces `name` atomically with `data` (write to a temporary file, sync, rename, sync
    /// the directory).
    fn write_atomic(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError>;
    /// Reads a whole small file, if it exists.
    fn read_whole(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
}
