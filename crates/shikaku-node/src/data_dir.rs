//! A node's data directory on real files — the one module of this crate that touches the file
//! system (the state machine reaches files only through the log's `Directory` trait):
//! `node.key` (the identity, created on first use from the operating system's randomness, 0600),
//! `LOCK` (one writer per ledger, across processes), `log/` (the segmented log, its index
//! checkpoint, the node snapshot and a clinic's receipts, all written through
//! [`FileDirectory`]'s atomic install) and a hub's `clinic-names`. Every other file goes through
//! [`write_atomic_with_mode`], the same install routine (write, fsync, rename, fsync the
//! directory).
//!
//! [`DataDir::take`] takes the directory (identity, lock, leftovers removed); from it,
//! [`DataDir::open_node`] opens the node a service runs and [`DataDir::open_store`] the
//! [`Store`], the ledger as the command line's tools open it (import, export, verify, offline
//! checks).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::snapshot::{NodeSnapshot, NODE_SNAPSHOT_FILE};
use crate::{Node, NodeConfig, Role};
use anyhow::{bail, Context, Result};
use shikaku_core::{NodeId, Projection, Replication, SignedEvent, Signer};
use shikaku_log::fs::FileDirectory;
use shikaku_log::storage::Directory as _;
use shikaku_log::{AppendOutcome, Log, LogConfig};

/// The projection snapshot file of earlier releases (superseded by the node snapshot in the
/// log folder; removed when a new one is written).
pub const LEGACY_SNAPSHOT_FILE: &str = "projection.snapshot";

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

/// Creates `dir` (and its parents) private to its owner, 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, directory
/// fsync), readable only by its owner (0600).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with_mode(path, bytes, 0o600)
}

/// The file beside `path` whose name is `path`'s with `suffix` appended (`x.key` → `x.key.pub`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// [`write_private_atomic`] with other permission bits (a public key may be 0644).
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    shikaku_log::fs::install_atomic(path, bytes, mode)
        .with_context(|| format!("installing {}", path.display()))
}

/// Whether `dir` already holds a ledger (a log segment).
fn holds_a_ledger(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("log")).is_ok_and(|entries| {
        entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("segment-"))
    })
}

/// Refuses a secret file that other users can read (as OpenSSH does), saying how to fix it.
pub fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {mode:o}): it must be private to its owner — run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The node's signing identity from `<dir>/node.key`, created from the OS's randomness when
/// missing and `create` is set — but only for a data directory without a ledger: a ledger
/// whose identity file is missing is refused, naming the file (a new key could not continue
/// its hash chain's checksums, nor sign as the node its peers know).
pub fn node_identity(dir: &Path, create: bool) -> Result<Option<Signer>> {
    let path = dir.join(NODE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            check_private(&path)?;
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} must hold exactly 32 bytes, found {}",
                    path.display(),
                    bytes.len()
                )
            })?;
            Ok(Some(Signer::from_secret(secret)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && holds_a_ledger(dir) => bail!(
            "{} holds a ledger but its identity file {} is missing: restore it from a backup (a new key cannot act as this node)",
            dir.display(),
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            create_private_dir(dir)?;
            let mut secret = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut secret))
                .context("reading /dev/urandom for a new node key")?;
            write_private_atomic(&path, &secret).context("writing the node key")?;
            Ok(Some(Signer::from_secret(secret)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Removes the temporary files an interrupted atomic write leaves (`*.tmp`, e.g. a projection
/// snapshot that a full disk cut short), in the data directory and its log. Called with the
/// lock held: nobody else is writing them.
pub fn remove_temporary_files(dir: &Path) {
    for folder in [dir.to_path_buf(), dir.join("log")] {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Takes the data directory's single-writer lock (released when the file is dropped).
pub fn take_lock(dir: &Path) -> Result<std::fs::File> {
    let lock_path = dir.join("LOCK");
    use std::os::unix::fs::OpenOptionsExt as _;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // A lock can be held for an instant by something that is not another shikaku (a process
    // forked by this one, between fork and exec, shares the lock until exec closes it): try
    // for a second before calling the ledger busy.
    let mut attempts = 0;
    while lock.try_lock().is_err() {
        attempts += 1;
        if attempts < 20 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        }
        bail!(
            "the ledger in {} is in use by another shikaku process; if a clinic node is serving it, ask that node instead: shikaku check --node http://ADDR (its --api address)",
            dir.display()
        );
    }
    Ok(lock)
}

/// A data directory taken for writing: its identity, and its single-writer lock, held while
/// this (or what it opened) lives. Every way of opening a node's ledger starts here.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    identity: Signer,
    lock: std::fs::File,
}

impl DataDir {
    /// Takes the data directory at `path`: its identity (created, with the directory, when
    /// `create` is set and no ledger exists), its lock, and leftovers of interrupted atomic
    /// writes removed. `None` when there is no identity and `create` is false.
    pub fn take(path: &Path, create: bool) -> Result<Option<DataDir>> {
        if path.exists() && !path.is_dir() {
            bail!("data directory {} exists and is not a directory", path.display());
        }
        let Some(identity) = node_identity(path, create)? else { return Ok(None) };
        let lock = take_lock(path)?;
        remove_temporary_files(path);
        Ok(Some(DataDir { path: path.to_path_buf(), identity, lock }))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node's signing identity.
    pub fn identity(&self) -> &Signer {
        &self.identity
    }

    /// The log folder, where the log, its checkpoint, the node snapshot and the receipt file
    /// live (written through [`FileDirectory`]'s atomic install).
    pub fn log_directory(&self) -> Result<FileDirectory> {
        let log = self.path.join("log");
        FileDirectory::new(&log).with_context(|| format!("opening {}", log.display()))
    }

    /// Opens the node a service runs (from its snapshot when one verifies); the lock is
    /// returned beside it, to be held as long as the node.
    pub fn open_node(self, config: NodeConfig) -> Result<(Node<FileDirectory>, std::fs::File)> {
        // A front-end's ledger is a copy of the shared stream: anything stored into it other
        // than by following the stream would give it positions no other front-end has.
        let cursor = self.path.join("log").join(crate::node::STREAM_CURSOR_FILE);
        if !config.follows_stream && cursor.exists() {
            bail!(
                "{} is a hub front-end's copy of the shared stream ({} exists): serve it with `hub serve --store nats://…`, import into the stream with `hub import --store nats://…`",
                self.path.display(),
                cursor.display()
            );
        }
        let node = Node::open(self.log_directory()?, self.identity.clone(), config)
            .with_context(|| format!("opening the ledger in {}", self.path.display()))?;
        Ok((node, self.lock))
    }

    /// Opens the bare log, as the command line's tools read and write it.
    pub fn open_store(self) -> Result<Store> {
        let log = Log::open(self.log_directory()?, LogConfig::new(self.identity.node_id()))
            .with_context(|| format!("opening the ledger in {}", self.path.display()))?;
        Ok(Store { log, dir: self.path, _lock: self.lock })
    }
}

impl Store {
    /// Opens the ledger in `dir`, creating the node identity and log when `create` is set.
    /// Returns `None` when there is no ledger and `create` is false.
    pub fn open_with(dir: &Path, create: bool) -> Result<Option<Store>> {
        DataDir::take(dir, create)?.map(DataDir::open_store).transpose()
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

    /// Every event that verifies, and a sentence for everything withheld: the damage recovery
    /// found on open and each record that fails its checks when read now (records an index
    /// checkpoint covered are not re-verified on open, so a read is where their damage shows).
    pub fn verified_events(&self) -> Result<(Vec<SignedEvent>, Vec<String>)> {
        let mut withheld: Vec<String> =
            self.log.recovery().damaged.iter().map(ToString::to_string).collect();
        let mut events = Vec::new();
        let head = self.log.head();
        let mut next = 1;
        while next < head {
            let end = (next + 65_536).min(head);
            match self.log.read_from(next, (end - next) as usize) {
                Ok(batch) => events.extend(batch.into_iter().map(|(_, e)| e)),
                Err(_) => {
                    // One by one, to withhold only what fails.
                    for position in next..end {
                        match self.log.read(position) {
                            Ok(e) => events.push(e),
                            Err(shikaku_log::LogError::Damaged { .. }) => {}
                            Err(e) => withheld.push(format!("position {position}: {e}")),
                        }
                    }
                }
            }
            next = end;
        }
        Ok((events, withheld))
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

    /// Writes an index checkpoint and the node snapshot now (the one `hub serve` and `clinic
    /// serve` start from).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.log.write_checkpoint()?;
        let projection = self.projection(Replication::All)?;
        let Some(snapshot) = crate::snapshot::of_log(&self.log, Role::Hub, &projection)? else {
            return Ok(());
        };
        self.log
            .directory_mut()
            .write_atomic(NODE_SNAPSHOT_FILE, &snapshot.encode())
            .context("writing the node snapshot")?;
        // The projection-only snapshot of earlier releases is superseded.
        let _ = std::fs::remove_file(self.dir.join(LEGACY_SNAPSHOT_FILE));
        Ok(())
    }

    /// The projection of the node snapshot, if one exists that verifies and belongs to this
    /// ledger.
    fn load_snapshot(&self) -> Option<(Projection, u64)> {
        let bytes = std::fs::read(self.dir.join("log").join(NODE_SNAPSHOT_FILE)).ok()?;
        let snapshot = NodeSnapshot::decode(&bytes).ok()?;
        if !self.log.recovery().damaged.is_empty()
            || self.log.id_at(snapshot.position) != Some(snapshot.id)
        {
            return None;
        }
        let position = snapshot.position;
        Some((snapshot.projection().ok()?, position))
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

/// Registered signing keys per insurer (the `--insurer-keys` file).
pub type InsurerKeys = std::collections::BTreeMap<
    shikaku_core::InsurerNumber,
    std::collections::BTreeSet<shikaku_core::AuthorKey>,
>;

/// Opens the node in `data_dir` (creating its key and ledger if needed), holding its lock:
/// the node starts from its snapshot when one verifies.
pub fn open_node(
    data_dir: &Path,
    config: NodeConfig,
) -> Result<(Node<FileDirectory>, std::fs::File)> {
    DataDir::take(data_dir, true)?
        .with_context(|| format!("no node key in {}", data_dir.display()))?
        .open_node(config)
}

/// The file in a hub's data directory that remembers its clinics' certificate names (for
/// `reconcile` on a stopped hub): `NODE-ID-HEX NAME` lines.
pub const CLINIC_NAMES_FILE: &str = "clinic-names";

/// Clinic names remembered by the hub in `data_dir` (none when the file does not exist).
pub fn load_clinic_names(
    data_dir: &Path,
) -> Result<std::collections::BTreeMap<shikaku_core::NodeId, String>> {
    let path = data_dir.join(CLINIC_NAMES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut names = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad =
            || anyhow::anyhow!("{} line {}: expected NODE-ID-HEX NAME", path.display(), n + 1);
        let (id, name) = line.split_once(' ').ok_or_else(bad)?;
        let id: [u8; 32] = shikaku_core::hex::decode_array(id).ok_or_else(bad)?;
        if !shikaku_protocol::wire::is_valid_node_name(name) {
            return Err(bad());
        }
        names.insert(shikaku_core::NodeId(id), name.to_owned());
    }
    Ok(names)
}

/// Adds `names` to the hub's remembered clinic names (atomically: a temporary file renamed).
pub fn save_clinic_names(
    data_dir: &Path,
    names: &std::collections::BTreeMap<shikaku_core::NodeId, String>,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    // A damaged names file (derived data) is replaced by what this hub saw.
    let mut all = load_clinic_names(data_dir).unwrap_or_default();
    all.extend(names.iter().map(|(k, v)| (*k, v.clone())));
    let text: String = all
        .iter()
        .map(|(id, name)| format!("{} {name}\n", shikaku_core::hex::encode(&id.0)))
        .collect();
    write_private_atomic(&data_dir.join(CLINIC_NAMES_FILE), text.as_bytes())
}
