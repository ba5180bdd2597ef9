//! Real files behind the [`Storage`] and [`Directory`] traits (positional IO, fdatasync, and a
//! directory fsync after creating, removing or renaming files).
//!
//! Everything a ledger holds can name members, so it is private to its owner: directories are
//! created 0700 and files 0600 (whatever the umask).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, FileExt, OpenOptionsExt as _};
use std::path::PathBuf;

use crate::storage::{Directory, Storage, StorageError};

fn io(error: std::io::Error) -> StorageError {
    match error.raw_os_error() {
        Some(28) | Some(122) => StorageError::NoSpace,
        _ => StorageError::Io(error.to_string()),
    }
}

/// A real file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl Storage for FileStorage {
    fn len(&self) -> Result<u64, StorageError> {
        Ok(self.file.metadata().map_err(io)?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StorageError::ShortRead {
                    offset,
                    len: buf.len(),
                    file_len: self.len().unwrap_or(0),
                }
            } else {
                io(e)
            }
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.file.write_all_at(data, offset).map_err(io)
    }

    fn set_len(&mut self, len: u64) -> Result<(), StorageError> {
        self.file.set_len(len).map_err(io)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(io)
    }
}

/// A real directory.
#[derive(Debug, Clone)]
pub struct FileDirectory {
    path: PathBuf,
}

impl FileDirectory {
    /// Opens (creating it if needed) a directory.
    pub fn new(path: impl Into<PathBuf>) -> Result<FileDirectory, StorageError> {
        let path = path.into();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(io)?;
        Ok(FileDirectory { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Directory for FileDirectory {
    type File = FileStorage;

    fn list(&self) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_type().map_err(io)?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&mut self, name: &str) -> Result<FileStorage, StorageError> {
        let file =
            OpenOptions::new().read(true).write(true).open(self.path.join(name)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    StorageError::NotFound(name.to_owned())
                } else {
                    io(e)
                }
            })?;
        Ok(FileStorage { file })
    }

    fn create(&mut self, name: &str) -> Result<FileStorage, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path.join(name))
            .map_err(io)?;
        Ok(FileStorage { file })
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        std::fs::remove_file(self.path.join(name)).map_err(io)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        File::open(&self.path).and_then(|d| d.sync_all()).map_err(io)
    }

    fn write_atomic(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        install_atomic(&self.path.join(name), data, 0o600).map_err(io)
    }

    fn read_whole(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match std::fs::read(self.path.join(name)) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }
}

/// The one atomic install of a whole file on real disks: write `data` to `<path>.tmp` with
/// `mode`, fsync it, rename it over `path`, fsync the directory. After a crash `path` holds
/// its old bytes or the new ones, and once this returns, the new ones durably. Every small
/// file shikaku writes (snapshots, checkpoints, receipts, keys, state files) goes through it.
pub fn install_atomic(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir =
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut temporary = path.as_os_str().to_os_string();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        std::io::Write::write_all(&mut file, data)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}
