//! An in-memory disk that injects the faults real disks have, for tests and the simulator:
//! a crash that loses unsynced writes (keeping a torn prefix of some), misdirected writes, bit
//! flips in durable data, an fsync that lies, and a full disk. Seeded: the same seed and the
//! same operations give the same faults.
//!
//! It keeps, per file, what a reader sees now (`current`, the page cache) apart from what
//! survives a crash (`durable`), like redb's crash-consistency test backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Directory, Storage, StorageError};

/// Sector size used for torn writes.
pub const SECTOR_BYTES: usize = 512;

/// Which faults to inject, as probabilities per operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// On crash, chance that an unsynced write survives only as a prefix of whole sectors.
    pub torn_write: f64,
    /// On crash, chance that an unsynced write survives completely.
    pub unsynced_survives: f64,
    /// Chance that a write lands at a wrong offset (one sector away) instead of its own.
    pub misdirected_write: f64,
    /// Chance that `sync` reports success without making anything durable.
    pub lying_fsync: f64,
    /// Total bytes the disk can hold across files; `None` for unlimited.
    pub capacity_bytes: Option<u64>,
    /// Power fails during the N-th sync from now (1 = the next): that sync and every later
    /// one return an error and persist nothing, until [`FaultDirectory::crash`].
    pub crash_at_sync: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    pending_len: Option<u64>,
}

#[derive(Debug)]
struct State {
    files: BTreeMap<String, MemFile>,
    durable_names: Vec<String>,
    config: FaultConfig,
    rng: u64,
}

impl State {
    fn random(&mut self) -> u64 {
        // xorshift64*: small, seeded, deterministic.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.random() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn roll(&mut self, pick: fn(&FaultConfig) -> f64) -> bool {
        let p = pick(&self.config);
        self.chance(p)
    }

    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.current.len() as u64).sum()
    }
}

/// A shared in-memory directory; clones see the same disk.
#[derive(Debug, Clone)]
pub struct FaultDirectory {
    state: Arc<Mutex<State>>,
}

/// A file on a [`FaultDirectory`].
#[derive(Debug)]
pub struct FaultFile {
    state: Arc<Mutex<State>>,
    name: String,
}

fn lock(state: &Arc<Mutex<State>>) -> MutexGuard<'_, State> {
    // A poisoned lock only means another test thread panicked; the data is still usable.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FaultDirectory {
    /// An empty disk with the given faults and seed.
    pub fn new(config: FaultConfig, seed: u64) -> FaultDirectory {
        FaultDirectory {
            state: Arc::new(Mutex::new(State {
                files: BTreeMap::new(),
                durable_names: Vec::new(),
                config,
                rng: seed | 1,
            })),
        }
    }

    /// Changes the faults from now on.
    pub fn set_config(&self, config: FaultConfig) {
        lock(&self.state).config = config;
    }

    /// Simulates power loss: unsynced writes are lost, kept, or torn to a sector prefix;
    /// files whose creation was not made durable by a directory sync disappear.
    pub fn crash(&self) {
        let mut state = lock(&self.state);
        let names: Vec<String> = state.files.keys().cloned().collect();
        for name in names {
            if !state.durable_names.contains(&name) {
                state.files.remove(&name);
                continue;
            }
            let Some(mut file) = state.files.remove(&name) else { continue };
            let mut image = file.durable.clone();
            if let Some(len) = file.pending_len {
                if state.roll(|c| c.unsynced_survives) {
                    image.resize(len as usize, 0);
                }
            }
            for (offset, data) in std::mem::take(&mut file.pending) {
                let keep = if state.roll(|c| c.unsynced_survives) {
                    data.len()
                } else if state.roll(|c| c.torn_write) {
                    let sectors = data.len().div_ceil(SECTOR_BYTES);
                    (state.random() as usize % sectors.max(1)) * SECTOR_BYTES
                } else {
                    0
                };
                let keep = keep.min(data.len());
                if keep > 0 {
                    let end = offset as usize + keep;
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[offset as usize..end].copy_from_slice(&data[..keep]);
                }
            }
            file.current = image.clone();
            file.durable = image;
            file.pending_len = None;
            state.files.insert(name, file);
        }
    }

    /// Flips one bit of durable data in `name` at `offset` (bit rot, a bad sector).
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) {
        let mut state = lock(&self.state);
        if let Some(file) = state.files.get_mut(name) {
            for image in [&mut file.current, &mut file.durable] {
                if let Some(byte) = image.get_mut(offset as usize) {
                    *byte ^= 1 << (bit % 8);
                }
            }
        }
    }

    /// Overwrites durable bytes of `name` at `offset` (a misdirected write from elsewhere).
    pub fn overwrite(&self, name: &str, offset: u64, data: &[u8]) {
        let mut state = lock(&self.state);
        if let Some(file) = state.files.get_mut(name) {
            for image in [&mut file.current, &mut file.durable] {
                let end = offset as usize + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[offset as usize..end].copy_from_slice(data);
            }
        }
    }

    /// An independent disk holding only what is durable here now, without faults: a backup
    /// taken at this moment (restoring it loses everything written afterwards).
    pub fn clone_durable(&self) -> FaultDirectory {
        let state = lock(&self.state);
        let files = state
            .files
            .iter()
            .filter(|(name, _)| state.durable_names.contains(name))
            .map(|(name, f)| {
                let file = MemFile {
                    current: f.durable.clone(),
                    durable: f.durable.clone(),
                    pending: Vec::new(),
                    pending_len: None,
                };
                (name.clone(), file)
            })
            .collect();
        FaultDirectory {
            state: Arc::new(Mutex::new(State {
                files,
                durable_names: state.durable_names.clone(),
                config: FaultConfig::default(),
                rng: state.rng,
            })),
        }
    }

    /// The durable image of a file (what a crash now would leave).
    pub fn durable_image(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.state).files.get(name).map(|f| f.durable.clone())
    }
}

impl Storage for FaultFile {
    fn len(&self) -> Result<u64, StorageError> {
        let state = lock(&self.state);
        let file =
            state.files.get(&self.name).ok_or_else(|| StorageError::NotFound(self.name.clone()))?;
        Ok(file.current.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let state = lock(&self.state);
        let file =
            state.files.get(&self.name).ok_or_else(|| StorageError::NotFound(self.name.clone()))?;
        let end = offset as usize + buf.len();
        if end > file.current.len() {
            return Err(StorageError::ShortRead {
                offset,
                len: buf.len(),
                file_len: file.current.len() as u64,
            });
        }
        buf.copy_from_slice(&file.current[offset as usize..end]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let used = state.used_bytes();
        let current_len = state.files.get(&self.name).map(|f| f.current.len() as u64).unwrap_or(0);
        let growth = (offset + data.len() as u64).saturating_sub(current_len);
        if let Some(capacity) = state.config.capacity_bytes {
            if used + growth > capacity {
                return Err(StorageError::NoSpace);
            }
        }
        let misdirect = state.roll(|c| c.misdirected_write);
        let target = if misdirect { offset + SECTOR_BYTES as u64 } else { offset };
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| StorageError::NotFound(self.name.clone()))?;
        let end = target as usize + data.len();
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[target as usize..end].copy_from_slice(data);
        file.pending.push((target, data.to_vec()));
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let used = state.used_bytes();
        let current_len = state.files.get(&self.name).map(|f| f.current.len() as u64).unwrap_or(0);
        if let Some(capacity) = state.config.capacity_bytes {
            if used + len.saturating_sub(current_len) > capacity {
                return Err(StorageError::NoSpace);
            }
        }
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| StorageError::NotFound(self.name.clone()))?;
        file.current.resize(len as usize, 0);
        file.pending_len = Some(len);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        if let Some(n) = state.config.crash_at_sync.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                return Err(StorageError::Io("simulated power failure during fsync".into()));
            }
        }
        if state.roll(|c| c.lying_fsync) {
            return Ok(());
        }
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| StorageError::NotFound(self.name.clone()))?;
        file.durable = file.current.clone();
        file.pending.clear();
        file.pending_len = None;
        Ok(())
    }
}

impl Directory for FaultDirectory {
    type File = FaultFile;

    fn list(&self) -> Result<Vec<String>, StorageError> {
        Ok(lock(&self.state).files.keys().cloned().collect())
    }

    fn open(&mut self, name: &str) -> Result<FaultFile, StorageError> {
        if !lock(&self.state).files.contains_key(name) {
            return Err(StorageError::NotFound(name.to_owned()));
        }
        Ok(FaultFile { state: self.state.clone(), name: name.to_owned() })
    }

    fn create(&mut self, name: &str) -> Result<FaultFile, StorageError> {
        let mut state = lock(&self.state);
        if state.files.contains_key(name) {
            return Err(StorageError::Io(format!("{name} already exists")));
        }
        state.files.insert(name.to_owned(), MemFile::default());
        Ok(FaultFile { state: self.state.clone(), name: name.to_owned() })
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.files.remove(name);
        state.durable_names.retain(|n| n != name);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        if state.config.crash_at_sync == Some(0) {
            return Err(StorageError::Io("simulated power failure during fsync".into()));
        }
        state.durable_names = state.files.keys().cloned().collect();
        Ok(())
    }

    /// Atomic as a rename is: after a crash the file holds its old bytes or the new ones,
    /// never a mix. But it is only as durable as the disk's fsync: after a power failure
    /// nothing is written, and a lying fsync leaves the old bytes (or no file) to be found
    /// after the next crash.
    fn write_atomic(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        if state.config.crash_at_sync == Some(0) {
            return Err(StorageError::Io("simulated power failure during fsync".into()));
        }
        if let Some(capacity) = state.config.capacity_bytes {
            if state.used_bytes() + data.len() as u64 > capacity {
                return Err(StorageError::NoSpace);
            }
        }
        let lied = state.roll(|c| c.lying_fsync);
        let was_durable = state.durable_names.iter().any(|n| n == name);
        let durable = match state.files.get(name) {
            Some(old) if lied => old.durable.clone(),
            _ => data.to_vec(),
        };
        state.files.insert(
            name.to_owned(),
            MemFile { current: data.to_vec(), durable, pending: Vec::new(), pending_len: None },
        );
        if !lied && !was_durable {
            state.durable_names.push(name.to_owned());
        }
        Ok(())
    }

    fn read_whole(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(lock(&self.state).files.get(name).map(|f| f.current.clone()))
    }
}
