//! The folder interface's runtime: watches `DIR/req` (inotify through `notify`, its polling
//! watcher where inotify is unavailable, and a rescan every few seconds either way), answers
//! each request file into `DIR/res` — atomically (a staging file, fsync, rename) and exactly
//! once across crashes (the journal, below) — and moves a request that cannot be answered to
//! `DIR/err` after writing its error answer. A request file is removed only after its answer
//! is in `res`.
//!
//! Exactly once: after the check is recorded, the answer is written to a staging file
//! `res/.shikaku-<id>.tmp` and fsynced; then the journal line `A <id> <ok|err> <name>` is
//! appended and fsynced; then the staging file is renamed to the answer's name and the
//! request removed (or moved to `err`), and `D <id>` appended. `<id>` is blake3 of the
//! request's file name and bytes. At start, every journalled request not yet `D` is
//! finished: its staging file (still there when the rename did not happen) is renamed, its
//! request removed — never answered again. A request that was being checked when the clinic
//! died, before its journal line, is answered after restart (and so checked twice, both
//! recorded; answered once). The journal is rewritten empty after that recovery, and with
//! its unfinished lines only whenever it passes 10,000 lines.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shikaku_core::keystore::Presented;
use shikaku_net::Runtime;
use shikaku_node::{ConsentAtCheck, MemberData, NodeError, PresentedCheck};

use super::xml::{self, AnswerFile, Answered, Identity, Lang, OvsError, OvsRequest};

/// The journal's file name inside the clinic's data directory.
pub const JOURNAL_FILE: &str = "ovs-journal";
const JOURNAL_HEADER: &str = "shikaku-ovs-journal 1\n";
/// A request that does not parse is read again this much later, and refused only when it
/// has not changed meanwhile: a client that writes in place (rather than renaming the file
/// into `req`) has that long to finish it.
const SETTLE_MS: u64 = 2_000;
/// The longest any request waits: a rescan of `req` at least this often, inotify or not.
const RESCAN: Duration = Duration::from_secs(2);

/// How the folder interface runs.
#[derive(Debug, Clone)]
pub struct OvsOptions {
    /// The folder holding `req`, `res` and `err`.
    pub dir: PathBuf,
    /// The clinic's data directory (the journal lives there).
    pub data_dir: PathBuf,
    /// The language of the answers' messages.
    pub lang: Lang,
    /// The polling interval when inotify is unavailable.
    pub poll: Duration,
    /// Requests checked at once (their records share durable writes).
    pub in_flight: usize,
    /// Use polling even where inotify works (network folders, tests).
    pub force_poll: bool,
}

impl OvsOptions {
    /// Defaults for `dir` and `data_dir`: Japanese messages, 500 ms polling fallback, 16 in
    /// flight.
    pub fn new(dir: &Path, data_dir: &Path) -> OvsOptions {
        OvsOptions {
            dir: dir.to_owned(),
            data_dir: data_dir.to_owned(),
            lang: Lang::Ja,
            poll: Duration::from_millis(500),
            in_flight: 16,
            force_poll: false,
        }
    }
}

/// What the folder interface has done since it started.
#[derive(Debug, Default)]
pub struct OvsStats {
    /// Requests answered with a check.
    pub answered: AtomicU64,
    /// Requests answered with an error and moved to `err`.
    pub refused: AtomicU64,
    /// Requests found finished (journalled) at start and completed without a new answer.
    pub recovered: AtomicU64,
}

/// The journal of answers made durable (module docs).
struct Journal {
    file: std::fs::File,
    path: PathBuf,
    /// Lines written since the journal was last rewritten.
    lines: u64,
    /// The `A` lines without their `D` yet, by request id.
    pending: HashMap<String, String>,
}

/// The journal is rewritten (holding only its unfinished `A` lines) once it has this many.
const JOURNAL_LINES_MAX: u64 = 10_000;

/// A journalled request: how it ended and its answer's file name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ok: bool,
    answer: String,
}

/// The journal's id of a request: blake3 of its name, a zero byte and its bytes.
fn request_id(name: &str, bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(bytes);
    h.finalize().to_hex().to_string()
}

/// Reads the journal: the requests answered and not yet done. A line cut short by a crash
/// (the last one, without its newline) is ignored; any other damage is an error naming the
/// line.
fn read_journal(path: &Path) -> anyhow::Result<HashMap<String, Entry>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let damaged = |line: usize, why: &str| {
        anyhow::anyhow!(
            "{} line {line} is damaged ({why}): the folder interface cannot tell which requests it already answered; move the file aside to start afresh (requests journalled in it but not finished may then be answered twice)",
            path.display()
        )
    };
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(end) => &text[..=end],
        None if text.is_empty() => &text[..],
        None => return Err(damaged(1, "no header")),
    };
    let text = std::str::from_utf8(complete).map_err(|_| damaged(0, "not UTF-8"))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if format!("{header}\n") == JOURNAL_HEADER => {}
        None => return Ok(HashMap::new()),
        Some(_) => return Err(damaged(1, "not a shikaku-ovs-journal 1 header")),
    }
    let mut pending = HashMap::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        let id_ok = |id: &str| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        match fields.as_slice() {
            ["A", id, kind @ ("ok" | "err"), name] if id_ok(id) => {
                let answer = shikaku_core::hex::decode(name)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| damaged(i + 1, "the answer's name is not hex UTF-8"))?;
                pending.insert((*id).to_owned(), Entry { ok: *kind == "ok", answer });
            }
            ["D", id] if id_ok(id) => {
                pending.remove(*id);
            }
            _ => return Err(damaged(i + 1, "not an A or D line")),
        }
    }
    Ok(pending)
}

impl Journal {
    /// Writes a fresh journal (header only) in place of the old one, atomically.
    fn fresh(path: &Path) -> anyhow::Result<Journal> {
        let file = Journal::rewrite(path, JOURNAL_HEADER)?;
        Ok(Journal { file, path: path.to_owned(), lines: 0, pending: HashMap::new() })
    }

    /// Installs `text` as the journal (temporary file, fsync, rename) and opens it to append.
    fn rewrite(path: &Path, text: &str) -> anyhow::Result<std::fs::File> {
        shikaku_node::data_dir::write_private_atomic(path, text.as_bytes())?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))
    }

    /// `A <id> …`, durably: from now on the request counts as answered.
    fn answered(&mut self, id: &str, line: String) -> std::io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.lines += 1;
        self.pending.insert(id.to_owned(), line);
        Ok(())
    }

    /// `D <id>` (not fsynced: a lost `D` only has recovery finish the request again). Past
    /// [`JOURNAL_LINES_MAX`] lines the journal is rewritten with its unfinished lines only.
    fn done(&mut self, id: &str) -> std::io::Result<()> {
        self.file.write_all(format!("D {id}\n").as_bytes())?;
        self.lines += 1;
        self.pending.remove(id);
        if self.lines > JOURNAL_LINES_MAX {
            let mut text = JOURNAL_HEADER.to_owned();
            for line in self.pending.values() {
                text.push_str(line);
            }
            self.file = Journal::rewrite(&self.path, &text).map_err(std::io::Error::other)?;
            self.lines = self.pending.len() as u64;
        }
        Ok(())
    }
}

/// The folder's three subfolders.
#[derive(Debug, Clone)]
struct Folders {
    req: PathBuf,
    res: PathBuf,
    err: PathBuf,
}

impl Folders {
    fn staging(&self, id: &str) -> PathBuf {
        self.res.join(format!(".shikaku-{id}.tmp"))
    }
}

/// Moves `from` into the folder `err` under its own name, or with `.1`, `.2` … appended
/// when that name is taken.
fn move_to_err(from: &Path, err: &Path, name: &str) -> std::io::Result<()> {
    let mut target = err.join(name);
    let mut n = 0;
    while target.exists() {
        n += 1;
        target = err.join(format!("{name}.{n}"));
    }
    std::fs::rename(from, target)
}

/// Renames the staging file to the answer. The folder is not fsynced: should the rename be
/// lost in a crash, the staging file is still there at the next start and its journal line
/// has it renamed then.
fn publish(folders: &Folders, id: &str, answer: &str) -> std::io::Result<()> {
    std::fs::rename(folders.staging(id), folders.res.join(answer))
}

/// Finishes a journalled request: its request removed, or moved to `err`.
fn finish_request(folders: &Folders, name: &str, ok: bool) -> std::io::Result<()> {
    let path = folders.req.join(name);
    let result =
        if ok { std::fs::remove_file(&path) } else { move_to_err(&path, &folders.err, name) };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The request files waiting in `req`, by name: `*.xml` regular files not starting with `.`.
fn waiting(req: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(req)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !name.starts_with('.') && name.to_ascii_lowercase().ends_with(".xml") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The folder interface, started: recovered, watching, answering.
pub struct OvsFolder {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    /// What it has done.
    pub stats: Arc<OvsStats>,
    _lock: std::fs::File,
}

impl OvsFolder {
    /// Creates `req`, `res` and `err` where missing, takes the folder (one clinic per folder),
    /// finishes what the journal says was answered before a crash, and starts answering.
    pub fn start(runtime: Arc<Runtime>, options: OvsOptions) -> anyhow::Result<OvsFolder> {
        let folders = Folders {
            req: options.dir.join("req"),
            res: options.dir.join("res"),
            err: options.dir.join("err"),
        };
        for dir in [&folders.req, &folders.res, &folders.err] {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating the folder {}: {e}", dir.display()))?;
        }
        let lock_path = options.dir.join(".shikaku-ovs.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "{} is already served by another shikaku clinic (its lock {} is held)",
                options.dir.display(),
                lock_path.display()
            );
        }
        let stats = Arc::new(OvsStats::default());
        let journal_path = options.data_dir.join(JOURNAL_FILE);
        recover(&folders, &journal_path, &stats)?;
        let journal = Arc::new(Mutex::new(Journal::fresh(&journal_path)?));
        let stop = Arc::new(tokio::sync::Notify::new());
        let task =
            tokio::spawn(run(runtime, options, folders, journal, stats.clone(), stop.clone()));
        Ok(OvsFolder { stop, task, stats, _lock: lock })
    }

    /// Stops taking requests, waits for those being answered, and returns.
    pub async fn shutdown(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// Finishes what the journal records as answered: publishes staging files not yet renamed,
/// removes (or moves to `err`) their requests; removes staging files never journalled.
fn recover(folders: &Folders, journal: &Path, stats: &OvsStats) -> anyhow::Result<()> {
    let pending = read_journal(journal)?;
    let io = |what: &str, e: std::io::Error| anyhow::anyhow!("{what}: {e}");
    for (id, entry) in &pending {
        if folders.staging(id).exists() {
            publish(folders, id, &entry.answer)
                .map_err(|e| io(&format!("publishing the answer {}", entry.answer), e))?;
        }
    }
    std::fs::File::open(&folders.res)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io("syncing res", e))?;
    for name in waiting(&folders.req).map_err(|e| io("reading req", e))? {
        // Read as when it was answered (at most one byte past the limit), so the id matches.
        let Ok((bytes, _)) = read_request(&folders.req.join(&name)) else { continue };
        let id = request_id(&name, &bytes);
        if let Some(entry) = pending.get(&id) {
            finish_request(folders, &name, entry.ok)
                .map_err(|e| io(&format!("finishing the request {name}"), e))?;
            stats.recovered.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Staging files without a journal line: the clinic died before the answer was
    // journalled; the request (still in req) is answered again.
    for entry in std::fs::read_dir(&folders.res).map_err(|e| io("reading res", e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_prefix(".shikaku-").and_then(|n| n.strip_suffix(".tmp")) {
            if !pending.contains_key(id) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// A request file's size and modification time: whether it changed between two reads.
type Version = (u64, u64);

/// What answering one request came to.
enum Outcome {
    /// Answered (or refused with an error answer); the request is gone from `req`.
    Done,
    /// Not answerable yet: read again after [`SETTLE_MS`]. With the version of a file that
    /// did not parse (perhaps still being written), which is refused if it is the same then.
    Later(Option<Version>),
    /// Gone before it was read.
    Vanished,
}

async fn run(
    runtime: Arc<Runtime>,
    options: OvsOptions,
    folders: Folders,
    journal: Arc<Mutex<Journal>>,
    stats: Arc<OvsStats>,
    stop: Arc<tokio::sync::Notify>,
) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let watcher = watch(&folders.req, &options, wake.clone());
    let rescan = if watcher.as_ref().is_some_and(|w| w.1) { RESCAN } else { options.poll };
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut later: HashMap<String, (u64, Option<Version>)> = HashMap::new();
    let clock = shikaku_net::clock::Stopwatch::start();
    let ms = move || clock.nanos() / 1_000_000;
    let mut tasks = tokio::task::JoinSet::new();
    let mut scan = true;
    loop {
        if scan {
            let req = folders.req.clone();
            match tokio::task::spawn_blocking(move || waiting(&req)).await {
                Ok(Ok(names)) => {
                    queue = names.into_iter().filter(|n| !in_flight.contains(n)).collect();
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        "the folder interface cannot read {}: {e}",
                        folders.req.display()
                    )
                }
                Err(_) => {}
            }
        }
        let now = ms();
        while in_flight.len() < options.in_flight.max(1) {
            let Some(name) = queue.pop_front() else { break };
            if later.get(&name).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let previous = later.remove(&name).and_then(|(_, version)| version);
            in_flight.insert(name.clone());
            let job = Job {
                runtime: runtime.clone(),
                folders: folders.clone(),
                journal: journal.clone(),
                stats: stats.clone(),
                lang: options.lang,
            };
            tasks.spawn(async move {
                let outcome = job.answer(&name, previous).await;
                (name, outcome)
            });
        }
        // Rescan on a change, on the timer, or when a finished request leaves nothing queued.
        scan = tokio::select! {
            _ = wake.notified() => true,
            _ = tokio::time::sleep(rescan) => true,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((name, outcome)) = done {
                    in_flight.remove(&name);
                    if let Outcome::Later(version) = outcome {
                        later.insert(name, (ms() + SETTLE_MS, version));
                    }
                }
                queue.is_empty()
            }
            _ = stop.notified() => break,
        };
    }
    // The requests being answered are finished; nothing new is taken.
    while tasks.join_next().await.is_some() {}
    drop(watcher);
}

/// Starts a watcher of `req` that wakes the loop: inotify, or notify's polling watcher where
/// inotify cannot be had. The flag says whether events come from the kernel.
fn watch(
    req: &Path,
    options: &OvsOptions,
    wake: Arc<tokio::sync::Notify>,
) -> Option<(Box<dyn notify::Watcher + Send>, bool)> {
    use notify::Watcher as _;
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            wake.notify_one();
        }
    };
    if !options.force_poll {
        match notify::recommended_watcher(handler.clone()) {
            Ok(mut watcher) => match watcher.watch(req, notify::RecursiveMode::NonRecursive) {
                Ok(()) => return Some((Box::new(watcher), true)),
                Err(e) => tracing::warn!("inotify on {} failed ({e}); polling", req.display()),
            },
            Err(e) => tracing::warn!("inotify is unavailable ({e}); polling"),
        }
    }
    let config = notify::Config::default().with_poll_interval(options.poll);
    match notify::PollWatcher::new(handler, config) {
        Ok(mut watcher) => match watcher.watch(req, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some((Box::new(watcher), false)),
            Err(_) => None,
        },
        Err(_) => None,
    }
}

/// Answering one request.
struct Job {
    runtime: Arc<Runtime>,
    folders: Folders,
    journal: Arc<Mutex<Journal>>,
    stats: Arc<OvsStats>,
    lang: Lang,
}

impl Job {
    async fn answer(self, name: &str, previous: Option<Version>) -> Outcome {
        let path = self.folders.req.join(name);
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_request(&path)).await
        };
        let (bytes, version) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Vanished,
            Ok(Err(e)) => {
                tracing::warn!("the folder interface cannot read a request ({e}); retrying");
                return Outcome::Later(None);
            }
            Err(_) => return Outcome::Vanished,
        };
        let request = match xml::parse_request(&bytes) {
            Ok(request) => request,
            // Perhaps still being written in place: refused only if unchanged after a while.
            Err(e) if matches!(e.code, "SHK901" | "SHK902") && previous != Some(version) => {
                return Outcome::Later(Some(version))
            }
            Err(e) => return self.write(name, &bytes, None, Err(&e)).await,
        };
        let presented = match &request.kind {
            xml::RequestKind::Card(token) => Presented::Card(*token),
            xml::RequestKind::CardData { key, birth } => {
                Presented::Key { key: key.clone(), birth: *birth }
            }
        };
        let consent = match request.consent {
            Some(true) => ConsentAtCheck::GivenNow,
            _ => ConsentAtCheck::AsRecorded,
        };
        let check =
            PresentedCheck { presented, date: request.service_date, operator: None, consent };
        match self.runtime.check_presented_with(check).await {
            Ok((presented, _)) => {
                let identity = match &presented.member_data {
                    MemberData::Opened(record) => {
                        Some(Identity { key: record.key.clone(), person: record.person.clone() })
                    }
                    MemberData::Plain => {
                        let member = presented.answer.member.clone();
                        self.runtime
                            .call(move |n, _| {
                                let member = member?;
                                let person = n.plain_identity(&member)?;
                                Some(Identity { key: member, person })
                            })
                            .await
                    }
                    _ => None,
                };
                let answered = Answered {
                    answer: &presented.answer,
                    identity: identity.as_ref(),
                    member_data: presented.member_data.label(),
                    online: presented.online,
                };
                self.write(name, &bytes, Some(&request), Ok(answered)).await
            }
            Err(e) => {
                let error = match &*e {
                    NodeError::Sealed(_) => OvsError::needs_birth_date(),
                    _ => {
                        tracing::warn!("the folder interface could not record a check: {e}");
                        OvsError::not_recorded()
                    }
                };
                self.write(name, &bytes, Some(&request), Err(&error)).await
            }
        }
    }

    /// Writes the answer (staging, fsync), journals it, publishes it and finishes the request.
    async fn write(
        &self,
        name: &str,
        bytes: &[u8],
        request: Option<&OvsRequest>,
        outcome: Result<Answered<'_>, &OvsError>,
    ) -> Outcome {
        let ok = outcome.is_ok();
        let charset = request.map(|r| r.charset).unwrap_or(xml::Charset::Utf8);
        let file = AnswerFile {
            request,
            charset,
            outcome,
            now_ms: self.runtime.clock().now_ms(),
            lang: self.lang,
        };
        let rendered = xml::render_answer(&file);
        let id = request_id(name, bytes);
        let answer = xml::answer_name(name);
        let folders = self.folders.clone();
        let journal = self.journal.clone();
        let name = name.to_owned();
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let staging = folders.staging(&id);
            let mut out = std::fs::File::create(&staging)?;
            out.write_all(&rendered)?;
            out.sync_all()?;
            drop(out);
            let kind = if ok { "ok" } else { "err" };
            let line = format!("A {id} {kind} {}\n", shikaku_core::hex::encode(answer.as_bytes()));
            lock(&journal).answered(&id, line)?;
            publish(&folders, &id, &answer)?;
            finish_request(&folders, &name, ok)?;
            lock(&journal).done(&id)
        })
        .await;
        match done {
            Ok(Ok(())) => {
                let counter = if ok { &self.stats.answered } else { &self.stats.refused };
                counter.fetch_add(1, Ordering::Relaxed);
                Outcome::Done
            }
            Ok(Err(e)) => {
                tracing::warn!("the folder interface could not write an answer ({e}); retrying");
                Outcome::Later(None)
            }
            Err(_) => Outcome::Later(None),
        }
    }
}

fn lock(journal: &Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a request file (at most one byte past the limit) and its [`Version`].
fn read_request(path: &Path) -> std::io::Result<(Vec<u8>, Version)> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let mut bytes = Vec::new();
    file.take(xml::REQUEST_MAX as u64 + 1).read_to_end(&mut bytes)?;
    Ok((bytes, (meta.len(), modified)))
}
