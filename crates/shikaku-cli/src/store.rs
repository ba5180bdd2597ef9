//! The node's ledger as the command line sees it: the durable segmented log (`shikaku-log`) in
//! `<data-dir>/log/`, owned by the node identity in `<data-dir>/node.key` (created on first
//! use from the operating system's randomness).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shikaku_core::{NodeId, Projection, Replication, SignedEvent, Signer};
use shikaku_log::fs::FileDirectory;
use shikaku_log::{AppendOutcome, Log, LogConfig};

/// Name of the projection snapshot file inside the data directory.
pub const SNAPSHOT_FILE: &str = "projection.snapshot";

/// Name of the node key file inside the data directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// A node's ledger, opened.
#[derive(Debug)]
pub struct Store {
    log: Log<FileDirectory>,
    dir: PathBuf,
    /// Held for the store's lifetime: one writer per ledger, across processes.
    _lock: std::fs::File,
}

/// The node's signing identity from `<dir>/node.key`, created from the OS's randomness when
/// missing and `create` is set.
pub fn node_identity(dir: &Path, create: bool) -> Result<Option<Signer>> {
    let path = dir.join(NODE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} must hold exactly 32 bytes, found {}",
                    path.display(),
                    bytes.len()
                )
            })?;
            Ok(Some(Signer::from_secret(secret)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut secret = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut secret))
                .context("reading /dev/urandom for a new node key")?;
            let temporary = dir.join(format!("{NODE_KEY_FILE}.tmp"));
            std::fs::write(&temporary, secret).context("writing the node key")?;
            std::fs::File::open(&temporary).and_then(|f| f.sync_all())?;
            std::fs::rename(&temporary, &path).context("installing the node key")?;
            std::fs::File::open(dir).and_then(|d| d.sync_all())?;
            Ok(Some(Signer::from_secret(secret)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Takes the data directory's single-writer lock (released when the file is dropped).
pub fn take_lock(dir: &Path) -> Result<std::fs::File> {
    let lock_path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "the ledger in {} is in use by another shikaku process; if a clinic node is serving it, ask that node instead: shikaku check --node http://ADDR (its --api address)",
            dir.display()
        );
    }
    Ok(lock)
}

impl Store {
    /// Opens the ledger in `dir`, creating the node identity and log when `create` is set.
    /// Returns `None` when there is no ledger and `create` is false.
    pub fn open_with(dir: &Path, create: bool) -> Result<Option<Store>> {
        if dir.exists() && !dir.is_dir() {
            bail!("data directory {} exists and is not a directory", dir.display());
        }
        let Some(identity) = node_identity(dir, create)? else { return Ok(None) };
        let lock = take_lock(dir)?;
        let files = FileDirectory::new(dir.join("log"))
            .with_context(|| format!("opening {}", dir.join("log").display()))?;
        let log = Log::open(files, LogConfig::new(identity.node_id()))
            .with_context(|| format!("opening the ledger in {}", dir.display()))?;
        Ok(Some(Store { log, dir: dir.to_path_buf(), _lock: lock }))
    }

    /// Opens the ledger, creating it if needed.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with(dir, true)?
            .ok_or_else(|| anyhow::anyhow!("no ledger in {}", dir.display()))
    }

    /// Opens an existing ledger; an error naming the directory when there is none.
    pub fn open_existing(dir: &Path) -> Result<Store> {
        Store::open_with(dir, false)?.ok_or_else(|| {
            anyhow::anyhow!(
                "there is no ledger in {}: import events first (shikaku ledger import FILE)",
                dir.display()
            )
        })
    }

    /// The node id.
    pub fn node(&self) -> NodeId {
        *self.log.node()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log.
    pub fn log(&self) -> &Log<FileDirectory> {
        &self.log
    }

    /// Whether the ledger holds no event.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Every event, in log order (damaged ranges are skipped: they are never served).
    pub fn events(&self) -> Result<Vec<SignedEvent>> {
        Ok(self.log.read_from(1, usize::MAX)?.into_iter().map(|(_, e)| e).collect())
    }

    /// Appends verified events durably (one group commit); duplicates are not stored twice.
    pub fn append(&mut self, events: &[SignedEvent]) -> Result<AppendOutcome> {
        Ok(self.log.append(events)?)
    }

    /// Writes an index checkpoint and a projection snapshot when enough was appended since
    /// the last ones (at least 100,000 events and a tenth of the ledger), so the next open and
    /// the next check stay fast.
    pub fn checkpoint_if_due(&mut self) -> Result<bool> {
        let since = self.log.events_since_checkpoint();
        if since >= 100_000 && since * 10 >= self.log.len() {
            self.checkpoint()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes an index checkpoint and a projection snapshot now.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.log.write_checkpoint()?;
        let projection = self.projection(Replication::All)?;
        let position = self.log.head() - 1;
        let Some(id) = self.log.id_at(position) else { return Ok(()) };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&position.to_le_bytes());
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(&projection.encode_snapshot(position));
        let path = self.dir.join(SNAPSHOT_FILE);
        let temporary = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        std::fs::write(&temporary, &bytes).context("writing the projection snapshot")?;
        std::fs::File::open(&temporary).and_then(|f| f.sync_all())?;
        std::fs::rename(&temporary, &path).context("installing the projection snapshot")?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all())?;
        Ok(())
    }

    /// The projection snapshot, if one exists that verifies and belongs to this ledger.
    fn load_snapshot(&self) -> Option<(Projection, u64)> {
        let bytes = std::fs::read(self.dir.join(SNAPSHOT_FILE)).ok()?;
        let position = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let id: [u8; 32] = bytes.get(8..40)?.try_into().ok()?;
        if self.log.id_at(position)?.0 != id {
            return None;
        }
        let (projection, covered) = Projection::decode_snapshot(&bytes[40..]).ok()?;
        (covered == position && projection.events_held() == position)
            .then_some((projection, position))
    }

    /// Folds every stored event into a projection.
    /// Starts from the projection snapshot when one verifies (its digest, and the event at its
    /// position in this log) and holds every insurer; folds the rest of the log on top.
    pub fn projection(&self, replication: Replication) -> Result<Projection> {
        let (mut projection, from) = match self.load_snapshot() {
            Some((snapshot, position)) if replication == Replication::All => {
                (snapshot, position + 1)
            }
            _ => (Projection::new(replication), 1),
        };
        let mut next = from;
        loop {
            let batch = self.log.read_from(next, 65_536)?;
            let Some((last, _)) = batch.last() else { break };
            next = last + 1;
            for (_, event) in &batch {
                projection.apply(event);
            }
        }
        projection.shrink_to_fit();
        Ok(projection)
    }
}
