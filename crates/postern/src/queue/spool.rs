//! The spool: the on-disk queue under `<data_dir>/queue/`, and the one writer for every
//! path into it (SMTP and local submission alike). What each file holds and how it is
//! named is [`spool_file`]'s; the order in which files reach the disk is this module's.
//!
//! It owns the files and the order in which they reach the disk. It must not know about
//! SMTP sessions, decide policy, or schedule deliveries. It never syncs the whole
//! filesystem (`syncfs`): on a shared host that would flush every customer's data.
//!
//! # Order of writes
//!
//! Commit: write the `.msg` under another name and fsync it, rename it into place (the
//! commit point), fsync the directory. A crash before the rename leaves a temporary or
//! free file, never acknowledged. Update: write the new `.env` under another name, fsync,
//! rename over the old one, fsync the directory. Remove: the `.msg` first (the item is
//! gone), then any `.env`; a crash in between leaves a `.env` alone, which `recover`
//! removes. A removal has no fsync of its own: the next commit's directory fsync, or the
//! kernel's writeback, makes it durable. Until then a crash can bring a delivered
//! message back (delivered twice, never lost), or leave its old name on a file already
//! blanked or reused, which `recover` recognises and removes.
//!
//! Files are mode 0600 and the directory 0700: the queue holds other people's mail.
//!
//! # Recycling
//!
//! A finished message's files are not unlinked but renamed to `free-<random>`, blanked
//! (overwritten with zeros), and reused for the next message written (up to [`MAX_FREE_FILES`]): the next message is
//! written into the free file where it is and renamed to its `.msg`. Creating and
//! deleting inodes per message is what a busy queue spends most of its CPU on: ext4's
//! inode allocator, on a file system without a journal, skips every inode freed in the
//! last minutes, one by one, while other writers spin on the directory lock it holds
//! (the profile is in `docs/benchmarks.md`). A rename allocates nothing. The name says what a file is, so a crash at any point leaves
//! either a queue item, a temporary file (removed by [`Spool::recover`]) or a free file
//! (taken back into the pool, overwritten when reused).

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{info, warn};

use super::spool_file::{
    self, ENVELOPE_EXT, FREE_PREFIX, Header, MESSAGE_EXT, TEMP_PREFIX, file_name, parse_file_name,
    parse_header, read_envelope_from,
};
use super::{Envelope, QueueId};
use crate::group_commit::{GroupCommit, NoResult};

const QUEUE_DIR: &str = "queue";
const CORRUPT_DIR: &str = "corrupt";
/// Finished files up to this size are blanked with zeros and keep their blocks; larger
/// ones are truncated.
const BLANK_AT_MOST: u64 = 64 * 1024;
/// The most blanked files kept for reuse; beyond that, finished files are unlinked. A
/// burst leaves as many free files as it had messages in the queue at once, and unlinking
/// the surplus makes the next files created nearby (Maildir files) slower to allocate on
/// ext4 without a journal (a lower bound measurably slowed the MX benchmark, see
/// `docs/benchmarks.md`). At most 4,096 × [`BLANK_AT_MOST`] (256 MiB) of disk stays allocated.
pub const MAX_FREE_FILES: usize = 4096;
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt envelope: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("queue ID {id} is not in the queue")]
    NotFound { id: QueueId },
    /// Refused rather than overwrite a committed message.
    #[error("queue ID {id} is already in the queue")]
    Duplicate { id: QueueId },
    #[error("queue ID {id}: cannot encode envelope: {source}")]
    Encode {
        id: QueueId,
        source: serde_json::Error,
    },
    /// The blocking task panicked or the runtime is shutting down.
    #[error("spool task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The batch of renames this change was in failed without a result (a panic).
    #[error("spool batch failed: {0}")]
    Batch(#[from] NoResult),
}

/// The on-disk queue under `<data_dir>/queue/`. One writer for every path into the queue.
///
/// Cheap to clone; clones share the same directory.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<SpoolDir>,
    /// Renames changes into place and fsyncs the directory once per batch.
    publisher: Arc<GroupCommit<Change, Result<(), SpoolError>>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// A change to the queue, ready to be made visible by a rename (or removal) and made
/// durable by the directory fsync its batch shares.
enum Change {
    /// A new message, its `.msg` written and fsynced under another name.
    Commit { id: QueueId, item: TempFile },
    /// A rewritten envelope, written and fsynced under a temporary name.
    Update { id: QueueId, envelope: TempFile },
}

/// What the blocking work needs: the directory and its pool of free files.
#[derive(Debug)]
struct SpoolDir {
    dir: PathBuf,
    /// Emptied files ready for reuse (see "Recycling").
    free: Mutex<Vec<PathBuf>>,
}

impl Spool {
    /// Opens the queue under `data_dir`, creating `<data_dir>/queue` (mode 0700) if needed.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        let dir = data_dir.join(QUEUE_DIR);
        create_dir(&dir)?;
        let inner = Arc::new(SpoolDir {
            dir,
            free: Mutex::new(Vec::new()),
        });
        let publishing = Arc::clone(&inner);
        let publisher = GroupCommit::new(move |changes| publishing.publish(changes));
        Ok(Spool { inner, publisher })
    }

    /// Stores a new message durably: writes its envelope and the message to one file,
    /// fsyncs it, renames it into place, and fsyncs the directory. Only when this returns
    /// `Ok` may the caller answer `250`. The message is shared, not copied, so that the
    /// caller can hand the same bytes to delivery afterwards.
    ///
    /// Group commit: the file is written and fsynced in parallel with other commits;
    /// the renames and the directory fsync are done for a whole batch of changes at once
    /// ([`GroupCommit`]), so sessions finishing DATA together share one directory fsync.
    ///
    /// `envelope.size` should be the length of `message`. If the future is dropped, the
    /// write still finishes in the background: the message may end up queued without
    /// having been acknowledged, which at worst delivers it twice.
    pub async fn commit(
        &self,
        envelope: &Envelope,
        message: Arc<Vec<u8>>,
    ) -> Result<(), SpoolError> {
        self.commit_then(envelope, message, || {}).await
    }

    /// [`commit`](Spool::commit), then, if the commit succeeded, runs `then` on the same
    /// blocking thread once the caller has been told: the message is handed to its first
    /// delivery attempt there
    /// ([`Dispatcher::first_attempt`](crate::delivery::dispatcher::Dispatcher::first_attempt)).
    /// The caller's future resolves
    /// before `then` runs, and `then` runs even if that future was dropped.
    pub async fn commit_then(
        &self,
        envelope: &Envelope,
        message: Arc<Vec<u8>>,
        then: impl FnOnce() + Send + 'static,
    ) -> Result<(), SpoolError> {
        debug_assert_eq!(
            envelope.size,
            message.len() as u64,
            "envelope size must match the message"
        );
        let json = encode(envelope)?;
        let id = envelope.queue_id.clone();
        let inner = Arc::clone(&self.inner);
        let publisher = Arc::clone(&self.publisher);
        let (tell, told) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let committed = inner
                .stage_commit(id, &json, &message)
                .and_then(|change| publisher.submit_blocking(change)?);
            let succeeded = committed.is_ok();
            // The caller may have gone; the message is committed all the same.
            let _ = tell.send(committed);
            if succeeded {
                then();
            }
        });
        // No answer: the blocking task panicked.
        told.await.map_err(|_| NoResult)?
    }

    /// Rewrites a committed envelope atomically and durably (temporary file, fsync,
    /// rename, fsync the directory). Fails with `NotFound` if the message has left the
    /// queue, so a late update cannot bring back a removed message.
    pub async fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let json = encode(envelope)?;
        let id = envelope.queue_id.clone();
        let inner = Arc::clone(&self.inner);
        let publisher = Arc::clone(&self.publisher);
        tokio::task::spawn_blocking(move || {
            let change = inner.stage_update(id, &json)?;
            publisher.submit_blocking(change)?
        })
        .await?
    }

    /// Removes a finished message: the `.msg` first, then any `.env`. Removing a message
    /// that is already gone is not an error.
    ///
    /// Not fsynced on its own: the removal reaches the disk with the next commit's
    /// directory fsync (same directory) or with the kernel's writeback of the directory,
    /// whichever comes first. A crash before that brings the finished message back and
    /// delivers it again: a duplicate, never a loss, and a directory fsync saved per
    /// batch of deliveries. [`Spool::recover`] knows the files such a crash can leave.
    pub async fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let spool = self.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || spool.remove_blocking(&id)).await?
    }

    /// [`remove`](Spool::remove), for a caller on a blocking thread.
    pub fn remove_blocking(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.inner.release(&self.inner.path(id, MESSAGE_EXT))?;
        self.inner.release(&self.inner.path(id, ENVELOPE_EXT))
    }

    /// Reads an envelope. Blocking, but small.
    pub fn load(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        self.inner.load(id)
    }

    pub fn message_path(&self, id: &QueueId) -> PathBuf {
        self.inner.path(id, MESSAGE_EXT)
    }

    /// Reads a whole message (without the envelope stored before it). Blocking.
    pub fn read_message(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let path = self.message_path(id);
        let mut bytes =
            read_still_named(&path).map_err(|e| not_found_or_io(id, path.clone(), e))?;
        let (start, end) = match parse_header(&bytes) {
            Header::Envelope {
                start,
                len,
                message_len,
            } => {
                let message_start = start + len + 1;
                let end = message_len.map_or(bytes.len(), |n| message_start.saturating_add(n));
                (message_start, end)
            }
            Header::None => (0, bytes.len()),
            Header::Damaged(message) => return Err(SpoolError::Corrupt { path, message }),
        };
        if end > bytes.len() {
            let message = format!("{} bytes of the message are missing", end - bytes.len());
            return Err(SpoolError::Corrupt { path, message });
        }
        bytes.truncate(end);
        bytes.drain(..start.min(end));
        Ok(bytes)
    }

    /// Every committed queue ID, sorted oldest first. Also removes leftovers of
    /// interrupted writes (temporary files, and a `.env` whose `.msg` was removed), takes
    /// back free files, and moves items whose envelope cannot be read to `queue/corrupt/`.
    ///
    /// Call it at startup, before any `commit`: it would take a commit in progress for
    /// leftovers.
    pub fn recover(&self) -> Result<Vec<QueueId>, SpoolError> {
        self.inner.recover()
    }

    /// Every committed queue ID, oldest first, changing nothing: safe while the server
    /// runs (for `postern queue list`).
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let scan = self.inner.scan()?;
        Ok(scan.messages.into_iter().collect())
    }

    /// The queue directory, `<data_dir>/queue`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl SpoolDir {
    fn path(&self, id: &QueueId, ext: &str) -> PathBuf {
        self.dir.join(file_name(id, ext))
    }

    /// The parallel part of a commit: writes and fsyncs the `.msg` under another name.
    /// (That no message has this ID yet is checked by the rename, which never replaces.)
    ///
    /// The file is padded with zeros to a multiple of [`PAD_TO`], and the header says where
    /// the message ends: a free file reused for a message that needs as many pages keeps
    /// its size and its blocks, so a commit neither truncates it (freeing blocks) nor
    /// extends it (allocating them again), which would add bitmap writes to its fsync.
    fn stage_commit(&self, id: QueueId, json: &[u8], message: &[u8]) -> Result<Change, SpoolError> {
        let (header, padding) = spool_file::framing(json, message);
        let all: [&[u8]; 5] = [header.as_bytes(), json, b"\n", message, padding];
        let item = self.write_temp(&file_name(&id, MESSAGE_EXT), &all)?;
        Ok(Change::Commit { id, item })
    }

    /// The parallel part of an update: writes and fsyncs the new envelope.
    fn stage_update(&self, id: QueueId, json: &[u8]) -> Result<Change, SpoolError> {
        if !exists(&self.path(&id, MESSAGE_EXT))? {
            return Err(SpoolError::NotFound { id });
        }
        let envelope = self.write_temp(&file_name(&id, ENVELOPE_EXT), &[json])?;
        Ok(Change::Update { id, envelope })
    }

    /// The shared part, for a batch: renames every change into place, then fsyncs the
    /// directory once. If that fsync fails, every change of the batch fails, and new
    /// messages are taken out again: their clients get a 4xx and send again, so a
    /// message is never delivered without its sender having been told it was accepted
    /// (a duplicate at worst, never a loss).
    fn publish(&self, changes: Vec<Change>) -> Vec<Result<(), SpoolError>> {
        let mut results: Vec<Result<Option<QueueId>, SpoolError>> =
            changes.into_iter().map(|c| self.apply(c)).collect();
        if let Err(e) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            for result in &mut results {
                if let Ok(committed) = result {
                    if let Some(id) = committed {
                        let _ = fs::remove_file(self.path(id, MESSAGE_EXT));
                    }
                    // io::Error is not Clone: one like it for each change.
                    *result = Err(SpoolError::Io {
                        path: self.dir.clone(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    });
                }
            }
        }
        results.into_iter().map(|r| r.map(drop)).collect()
    }

    /// Makes one change visible. Returns the ID of a new message, for an undo.
    fn apply(&self, change: Change) -> Result<Option<QueueId>, SpoolError> {
        match change {
            Change::Commit { id, item } => {
                let path = self.path(&id, MESSAGE_EXT);
                match item.persist_new(&path) {
                    Ok(()) => Ok(Some(id)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Err(SpoolError::Duplicate { id })
                    }
                    Err(source) => Err(SpoolError::Io { path, source }),
                }
            }
            Change::Update { id, envelope } => {
                // Removed since the update was staged: don't bring it back.
                if !exists(&self.path(&id, MESSAGE_EXT))? {
                    return Err(SpoolError::NotFound { id });
                }
                envelope.persist(&self.path(&id, ENVELOPE_EXT))?;
                Ok(None)
            }
        }
    }

    /// Writes a temporary file for `name`, in a free file when there is one.
    fn write_temp<B: AsRef<[u8]>>(&self, name: &str, parts: &[B]) -> Result<TempFile, SpoolError> {
        let recycled = lock(&self.free).pop();
        TempFile::write(&self.dir, name, parts, recycled)
    }

    /// Takes a finished file out of the queue: renames it to a free file and blanks it,
    /// or unlinks it when the pool is full. A file that is already gone is not an error.
    /// The caller fsyncs the directory.
    fn release(&self, path: &Path) -> Result<(), SpoolError> {
        if lock(&self.free).len() >= MAX_FREE_FILES {
            return remove_if_present(path);
        }
        let free = self
            .dir
            .join(format!("{FREE_PREFIX}{:016x}", rand::random::<u64>()));
        match fs::rename(path, &free) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(SpoolError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        // Blank it now, so that finished mail does not linger; if that fails the file is
        // simply not reused.
        match open_existing(&free).and_then(|file| blank(&file)) {
            Ok(()) => lock(&self.free).push(free),
            Err(_) => {
                let _ = fs::remove_file(&free);
            }
        }
        Ok(())
    }

    fn load(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        let env_path = self.path(id, ENVELOPE_EXT);
        let (path, bytes) = match read_still_named(&env_path) {
            Ok(bytes) => (env_path, bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let msg_path = self.path(id, MESSAGE_EXT);
                let bytes = read_stored_envelope(&msg_path)
                    .map_err(|e| not_found_or_io(id, msg_path.clone(), e))?;
                (msg_path, bytes)
            }
            Err(e) => {
                return Err(SpoolError::Io {
                    path: env_path,
                    source: e,
                });
            }
        };
        let envelope: Envelope =
            serde_json::from_slice(&bytes).map_err(|e| SpoolError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if envelope.queue_id != *id {
            return Err(SpoolError::Corrupt {
                path,
                message: format!("holds queue ID {}", envelope.queue_id),
            });
        }
        Ok(envelope)
    }

    fn recover(&self) -> Result<Vec<QueueId>, SpoolError> {
        let scan = self.scan()?;
        for path in &scan.temp_files {
            self.remove_leftover(path, "temporary file");
        }
        let mut free = lock(&self.free);
        for path in scan.free_files {
            if free.len() < MAX_FREE_FILES {
                free.push(path);
            } else {
                self.remove_leftover(&path, "free file beyond the pool's size");
            }
        }
        drop(free);
        for id in scan.envelopes.difference(&scan.messages) {
            self.remove_leftover(
                &self.path(id, ENVELOPE_EXT),
                "envelope of a removed message",
            );
        }
        let mut committed = Vec::with_capacity(scan.messages.len());
        // BTreeSet iterates in ID order, which is time order.
        for id in scan.messages {
            let loaded = self.load(&id);
            if self.released_before_a_crash(&id, &loaded) {
                for ext in [MESSAGE_EXT, ENVELOPE_EXT] {
                    let what = "finished message whose removal had not reached the disk";
                    self.remove_leftover(&self.path(&id, ext), what);
                }
                continue;
            }
            match loaded {
                Ok(_) => committed.push(id),
                Err(SpoolError::Corrupt { message, .. }) => self.quarantine(&id, &message),
                Err(e) => return Err(e),
            }
        }
        Ok(committed)
    }

    /// Whether the `.msg` of `id` is a file that had been released (renamed to `free-…`,
    /// then blanked or reused for another message) when a crash lost the rename, which
    /// [`Spool::remove`] does not fsync: all zeros, empty although its envelope says
    /// otherwise, or holding another queue ID's message. Nothing else writes such files,
    /// and such a message had been delivered: its remains are removed, not quarantined.
    fn released_before_a_crash(&self, id: &QueueId, loaded: &Result<Envelope, SpoolError>) -> bool {
        use std::io::Read;
        let path = self.path(id, MESSAGE_EXT);
        let mut first = [0u8; 1];
        match File::open(&path).and_then(|mut file| file.read(&mut first)) {
            Ok(0) => !matches!(loaded, Ok(envelope) if envelope.size == 0),
            Ok(_) => first[0] == 0 || holds_another_message(&path, id),
            Err(_) => false,
        }
    }

    /// Sorts the directory's entries by what their names say they are.
    fn scan(&self) -> Result<Scan, SpoolError> {
        let io_err = |source| SpoolError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut scan = Scan::default();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if entry.file_type().map_err(io_err)?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                scan.temp_files.push(entry.path());
            } else if name.starts_with(FREE_PREFIX) {
                scan.free_files.push(entry.path());
            } else if let Some((id, ext)) = parse_file_name(name) {
                match ext {
                    MESSAGE_EXT => scan.messages.insert(id),
                    _ => scan.envelopes.insert(id),
                };
            }
        }
        Ok(scan)
    }

    /// Leftovers are harmless if they stay, so a failure is logged, not returned.
    fn remove_leftover(&self, path: &Path, what: &str) {
        match fs::remove_file(path) {
            Ok(()) => {
                info!(event = "spool_cleanup", path = %path.display(), what, "removed leftover of an interrupted write")
            }
            Err(e) => {
                warn!(event = "spool_cleanup", path = %path.display(), what, error = %e, "cannot remove leftover")
            }
        }
    }

    /// Moves an unreadable envelope and its message to `corrupt/` for a human to look at:
    /// never delete mail we could not read. If the move fails the files stay where they
    /// are, are skipped, and are tried again at the next start.
    fn quarantine(&self, id: &QueueId, reason: &str) {
        warn!(event = "spool_corrupt", queue_id = %id, reason, "skipping unreadable queue item, moving it to queue/corrupt/");
        let corrupt = self.dir.join(CORRUPT_DIR);
        let moved = create_dir(&corrupt).and_then(|()| {
            for ext in [ENVELOPE_EXT, MESSAGE_EXT] {
                let from = self.path(id, ext);
                if exists(&from)? {
                    let to = corrupt.join(file_name(id, ext));
                    fs::rename(&from, &to)
                        .map_err(|source| SpoolError::Io { path: from, source })?;
                }
            }
            Ok(())
        });
        if let Err(e) = moved {
            warn!(event = "spool_corrupt", queue_id = %id, error = %e, "cannot move queue item to queue/corrupt/");
        }
    }
}

/// The directory entries `recover` cares about.
#[derive(Default)]
struct Scan {
    temp_files: Vec<PathBuf>,
    free_files: Vec<PathBuf>,
    messages: BTreeSet<QueueId>,
    envelopes: BTreeSet<QueueId>,
}

fn encode(envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec_pretty(envelope).map_err(|source| SpoolError::Encode {
        id: envelope.queue_id.clone(),
        source,
    })
}

fn not_found_or_io(id: &QueueId, path: PathBuf, source: io::Error) -> SpoolError {
    if source.kind() == io::ErrorKind::NotFound {
        SpoolError::NotFound { id: id.clone() }
    } else {
        SpoolError::Io { path, source }
    }
}

fn exists(path: &Path) -> Result<bool, SpoolError> {
    path.try_exists().map_err(|source| SpoolError::Io {
        path: path.to_owned(),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Creates a directory (and missing parents) with mode 0700, and fsyncs the parent so
/// that the new entry survives a crash.
fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    if exists(dir)? {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| SpoolError::Io {
            path: dir.to_owned(),
            source,
        })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Overwrites a finished file with zeros, keeping its size and its blocks: the next
/// message written over it needs no block allocation, and an `fdatasync` of the same size
/// writes no metadata (truncating frees blocks that the next message allocates again).
/// Files above [`BLANK_AT_MOST`] are truncated instead, so that a few large messages do
/// not keep their disk space. Not fsynced: the zeros reach the disk with the next
/// writeback, or are replaced by the next message first.
fn blank(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const ZEROS: [u8; 8192] = [0; 8192];
    let len = file.metadata()?.len();
    if len > BLANK_AT_MOST {
        return file.set_len(0);
    }
    let mut offset = 0;
    while offset < len {
        let chunk = (len - offset).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..chunk], offset)?;
        offset += chunk as u64;
    }
    Ok(())
}

/// Opens a file of ours for writing, never through a symbolic link.
fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

// --- The atomic-write helper (chasquid's safeio): every write into the queue uses it. ---

/// A file written and fsynced under a temporary name, waiting to be renamed into place.
/// Dropped without `persist`, it is removed, so a failed write leaves nothing behind.
struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// Writes the concatenation of `parts` to a file and fsyncs it: the `recycled` free
    /// file where it is, when given and still usable, otherwise a new
    /// `dir/tmp-<name>.<random>` (mode 0600).
    fn write<B: AsRef<[u8]>>(
        dir: &Path,
        name: &str,
        parts: &[B],
        recycled: Option<PathBuf>,
    ) -> Result<TempFile, SpoolError> {
        let reused = recycled.and_then(|free| reuse(&free).ok().map(|file| (free, file)));
        let (path, mut file) = match reused {
            Some(reused) => reused,
            None => {
                let path = dir.join(format!("{TEMP_PREFIX}{name}.{:08x}", rand::random::<u32>()));
                // create_new: never write through a file (or symlink) that is already there.
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(FILE_MODE)
                    .open(&path)
                    .map_err(|source| SpoolError::Io {
                        path: path.clone(),
                        source,
                    })?;
                (path, file)
            }
        };
        let io_err = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        // From here on, Drop removes the file if anything fails.
        let temp = TempFile {
            path: path.clone(),
            persisted: false,
        };
        let mut written = 0u64;
        for part in parts {
            file.write_all(part.as_ref()).map_err(io_err)?;
            written += part.as_ref().len() as u64;
        }
        // A reused file may be longer than this message: cut the rest.
        if file.metadata().map_err(io_err)?.len() > written {
            file.set_len(written).map_err(io_err)?;
        }
        // fdatasync is enough: it flushes the size too, which is all the metadata
        // needed to read the data back (POSIX), and skips timestamps.
        file.sync_data().map_err(io_err)?;
        Ok(temp)
    }

    /// Renames the file to `to`, unless `to` exists (`AlreadyExists`). The caller fsyncs
    /// the directory.
    fn persist_new(mut self, to: &Path) -> io::Result<()> {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(
            AT_FDCWD,
            &self.path,
            AT_FDCWD,
            to,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // A file system without RENAME_NOREPLACE: look, then rename. Queue IDs are
            // unique, so nothing else creates `to` in between.
            Err(nix::errno::Errno::EINVAL) => {
                if to.try_exists()? {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                fs::rename(&self.path, to)?;
            }
            Err(errno) => return Err(errno.into()),
        }
        self.persisted = true;
        Ok(())
    }

    /// Renames the file to `to`, replacing it. The caller fsyncs the directory.
    fn persist(mut self, to: &Path) -> Result<(), SpoolError> {
        fs::rename(&self.path, to).map_err(|source| SpoolError::Io {
            path: to.to_owned(),
            source,
        })?;
        self.persisted = true;
        Ok(())
    }
}

/// Opens the free file `free` for writing. The writer overwrites it from the start and
/// cuts what is left beyond its own end.
fn reuse(free: &Path) -> io::Result<File> {
    let opened = open_existing(free);
    if opened.is_err() {
        let _ = fs::remove_file(free);
    }
    opened
}

/// Whether the `.msg` at `path` starts with the envelope of another queue ID.
fn holds_another_message(path: &Path, id: &QueueId) -> bool {
    read_stored_envelope(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Envelope>(&bytes).ok())
        .is_some_and(|envelope| envelope.queue_id != *id)
}

/// The envelope stored at the start of a `.msg`. A `.msg` without one (from an earlier
/// version, whose `.env` is gone) gives an empty envelope, which the caller finds corrupt.
fn read_stored_envelope(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let envelope = read_envelope_from(&mut file)?;
    ensure_still_named(&file, path)?;
    Ok(envelope)
}

/// Reads a whole queue file. `NotFound` if the file left that name while it was read: a
/// finished file is blanked and reused for another message (see "Recycling"), so an open
/// descriptor does not keep the old content the way an unlinked file would, and a reader
/// racing a removal (`postern queue show`) must not show what it read.
fn read_still_named(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    ensure_still_named(&file, path)?;
    Ok(bytes)
}

/// `NotFound` unless `path` still names the open `file`.
fn ensure_still_named(file: &File, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let opened = file.metadata()?;
    let named = fs::symlink_metadata(path)?;
    if (opened.dev(), opened.ino()) == (named.dev(), named.ino()) {
        Ok(())
    } else {
        Err(io::ErrorKind::NotFound.into())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes renames and removals in `dir` durable. Only this directory: never `syncfs`.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SpoolError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool_file::{HEADER_MAGIC, PAD_TO};
    use crate::queue::{Origin, RecipientStatus};
    use std::os::unix::fs::PermissionsExt;

    fn envelope(parts: &[&[u8]]) -> Envelope {
        Envelope::new(
            QueueId::generate(),
            "alice@example.org".into(),
            vec!["bob@example.com".into()],
            Origin::Smtp {
                client: "192.0.2.1".into(),
                listener: "submission".into(),
                login: Some("alice@example.org".into()),
            },
            parts.iter().map(|p| p.len() as u64).sum(),
            1_700_000_000,
        )
    }

    async fn commit_one(spool: &Spool) -> Envelope {
        let parts: [&[u8]; 2] = [b"Received: by test\r\n", b"Subject: hi\r\n\r\nbody\r\n"];
        let env = envelope(&parts);
        spool.commit(&env, Arc::new(parts.concat())).await.unwrap();
        env
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn commit_then_load_and_read_round_trip() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        assert_eq!(spool.dir(), data.path().join("queue"));
        let env = commit_one(&spool).await;

        assert_eq!(spool.load(&env.queue_id).unwrap(), env);
        let message = spool.read_message(&env.queue_id).unwrap();
        assert_eq!(message, b"Received: by test\r\nSubject: hi\r\n\r\nbody\r\n");
        assert_eq!(message.len() as u64, env.size);

        let id = &env.queue_id;
        assert_eq!(names_in(spool.dir()), [format!("{id}.msg")]);
        let stored = fs::read(spool.message_path(id)).unwrap();
        assert!(
            stored.starts_with(b"postern-queue-1 "),
            "no envelope header"
        );
        // Padded, so that the next message written into this file keeps its size.
        assert_eq!(stored.len() % PAD_TO, 0, "not padded");
        let end = stored.windows(6).position(|w| w == b"body\r\n").unwrap() + 6;
        assert!(
            stored[end..].iter().all(|&b| b == 0),
            "padding is not zeros"
        );
    }

    #[test]
    fn files_without_the_message_length_are_read_to_their_end() {
        // As written before the header recorded the message length (and padding).
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let message = b"Subject: unpadded\r\n\r\nbody\r\n";
        let env = envelope(&[message]);
        let json = encode(&env).unwrap();
        let mut stored = format!("{HEADER_MAGIC} {}\n", json.len()).into_bytes();
        stored.extend_from_slice(&json);
        stored.push(b'\n');
        stored.extend_from_slice(message);
        fs::write(spool.message_path(&env.queue_id), stored).unwrap();
        assert_eq!(spool.load(&env.queue_id).unwrap(), env);
        assert_eq!(spool.read_message(&env.queue_id).unwrap(), message);
    }

    #[tokio::test]
    async fn items_of_the_earlier_two_file_layout_are_still_read() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = envelope(&[b"Subject: old\r\n\r\nbody\r\n"]);
        let id = &env.queue_id;
        fs::write(spool.message_path(id), b"Subject: old\r\n\r\nbody\r\n").unwrap();
        fs::write(spool.inner.path(id, ENVELOPE_EXT), encode(&env).unwrap()).unwrap();

        assert_eq!(spool.recover().unwrap(), std::slice::from_ref(id));
        assert_eq!(spool.load(id).unwrap(), env);
        assert_eq!(
            spool.read_message(id).unwrap(),
            b"Subject: old\r\n\r\nbody\r\n"
        );
        spool.remove(id).await.unwrap();
        assert!(spool.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_damaged_header_line_is_corrupt_not_a_panic() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let id = QueueId::generate();
        for bad in [
            &b"postern-queue-1 99999999999999999999\n{}"[..],
            b"postern-queue-1 abc\n{}\nbody",
            b"postern-queue-1 500\n{\"short\": 1}\n",
            b"postern-queue-1",
            b"postern-queue-1 2 3 4\n{}\nabc",
            b"postern-queue-1 2 x\n{}\nabc",
        ] {
            fs::write(spool.message_path(&id), bad).unwrap();
            let loaded = spool.load(&id);
            assert!(
                matches!(loaded, Err(SpoolError::Corrupt { .. })),
                "{loaded:?}"
            );
        }
        for bad in [
            &b"postern-queue-1 abc\n{}\nbody"[..],
            b"postern-queue-1 2 10\n{}\nbody",
            b"postern-queue-1 2 18446744073709551615\n{}\nbody",
        ] {
            fs::write(spool.message_path(&id), bad).unwrap();
            let read = spool.read_message(&id);
            assert!(matches!(read, Err(SpoolError::Corrupt { .. })), "{read:?}");
        }
    }

    #[tokio::test]
    async fn files_and_directory_are_private() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = commit_one(&spool).await;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(spool.dir()), 0o700);
        assert_eq!(mode(&spool.message_path(&env.queue_id)), 0o600);
        spool.update(&env).await.unwrap();
        assert_eq!(mode(&spool.inner.path(&env.queue_id, ENVELOPE_EXT)), 0o600);
    }

    #[tokio::test]
    async fn commit_then_runs_its_continuation_after_a_commit_only() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = commit_one(&spool).await;
        let message = Arc::new(b"Subject: again\r\n\r\nx\r\n".to_vec());
        let mut fresh = envelope(&[&message]);
        // The continuation sees the message committed already.
        let (ran, seen) = std::sync::mpsc::channel();
        let probe = spool.clone();
        let id = fresh.queue_id.clone();
        spool
            .commit_then(&fresh, Arc::clone(&message), move || {
                let _ = ran.send(probe.load(&id).is_ok());
            })
            .await
            .unwrap();
        let committed = seen.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(committed, Ok(true));

        // A failed commit (this ID is taken) runs nothing.
        fresh.queue_id = env.queue_id.clone();
        let (ran, seen) = std::sync::mpsc::channel::<()>();
        let failed = spool
            .commit_then(&fresh, message, move || {
                let _ = ran.send(());
            })
            .await;
        assert!(
            matches!(failed, Err(SpoolError::Duplicate { .. })),
            "{failed:?}"
        );
        assert!(
            seen.recv_timeout(std::time::Duration::from_secs(10))
                .is_err()
        );
    }

    #[tokio::test]
    async fn commit_refuses_to_overwrite_a_queued_message() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = commit_one(&spool).await;
        let mut other = env.clone();
        other.size = 5;
        let err = spool.commit(&other, Arc::new(b"other".to_vec())).await;
        assert!(matches!(err, Err(SpoolError::Duplicate { .. })), "{err:?}");
        assert_eq!(
            spool.read_message(&env.queue_id).unwrap(),
            b"Received: by test\r\nSubject: hi\r\n\r\nbody\r\n"
        );
    }

    #[tokio::test]
    async fn recover_keeps_committed_and_removes_leftovers() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let older = commit_one(&spool).await;
        let newer = commit_one(&spool).await;
        let orphan = QueueId::generate();
        let dir = spool.dir();
        // The .env of a message removed by a crash between its two files.
        fs::write(dir.join(format!("{orphan}.env")), encode(&older).unwrap()).unwrap();
        fs::write(dir.join(format!("tmp-{orphan}.env.0badc0de")), b"{").unwrap();
        fs::write(dir.join(format!("tmp-{orphan}.msg.12345678")), b"half").unwrap();
        fs::write(dir.join("README"), b"a stray file is left alone").unwrap();

        let ids = spool.recover().unwrap();

        assert_eq!(ids, [older.queue_id.clone(), newer.queue_id.clone()]);
        let mut expected = vec![
            "README".to_owned(),
            format!("{}.msg", older.queue_id),
            format!("{}.msg", newer.queue_id),
        ];
        expected.sort();
        assert_eq!(names_in(dir), expected);
    }

    #[tokio::test]
    async fn update_is_visible_after_reload() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let mut env = commit_one(&spool).await;
        env.recipients[0].status = RecipientStatus::Delivered;
        env.recipients[0].attempts = 1;
        env.recipients[0].last_error = Some("250 2.0.0 ok".into());
        spool.update(&env).await.unwrap();

        let reopened = Spool::open(data.path()).unwrap();
        assert_eq!(reopened.load(&env.queue_id).unwrap(), env);
        assert_eq!(names_in(spool.dir()).len(), 2, "no temporary file left");
    }

    #[tokio::test]
    async fn update_of_a_removed_message_fails() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = commit_one(&spool).await;
        spool.remove(&env.queue_id).await.unwrap();
        let err = spool.update(&env).await;
        assert!(matches!(err, Err(SpoolError::NotFound { .. })), "{err:?}");
        assert!(
            names_in(spool.dir())
                .iter()
                .all(|name| name.starts_with(FREE_PREFIX)),
            "{:?}",
            names_in(spool.dir())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_updates_and_removes_all_land() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let spool = spool.clone();
                tokio::spawn(async move { commit_one(&spool).await })
            })
            .collect();
        let mut committed = Vec::new();
        for task in tasks {
            committed.push(task.await.unwrap());
        }
        let (removed, kept) = committed.split_at(20);
        let mut changes = Vec::new();
        for env in removed {
            let (spool, id) = (spool.clone(), env.queue_id.clone());
            changes.push(tokio::spawn(async move { spool.remove(&id).await }));
        }
        for env in kept {
            let (spool, mut env) = (spool.clone(), env.clone());
            env.recipients[0].attempts = 3;
            changes.push(tokio::spawn(async move { spool.update(&env).await }));
        }
        for change in changes {
            change.await.unwrap().unwrap();
        }
        let mut expected: Vec<QueueId> = kept.iter().map(|e| e.queue_id.clone()).collect();
        expected.sort();
        assert_eq!(spool.recover().unwrap(), expected);
        for env in kept {
            assert_eq!(spool.load(&env.queue_id).unwrap().recipients[0].attempts, 3);
        }
    }

    fn free_files(dir: &Path) -> Vec<PathBuf> {
        names_in(dir)
            .into_iter()
            .filter(|name| name.starts_with(FREE_PREFIX))
            .map(|name| dir.join(name))
            .collect()
    }

    #[tokio::test]
    async fn finished_files_are_blanked_and_reused_for_the_next_message() {
        use std::os::unix::fs::MetadataExt;
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let first = commit_one(&spool).await;
        // An update gives it a .env too: both files are recycled.
        spool.update(&first).await.unwrap();
        let inode = |p: &Path| fs::metadata(p).unwrap().ino();
        let mut first_inodes = [
            inode(&spool.message_path(&first.queue_id)),
            inode(&spool.inner.path(&first.queue_id, ENVELOPE_EXT)),
        ];
        spool.remove(&first.queue_id).await.unwrap();
        let free = free_files(spool.dir());
        assert_eq!(free.len(), 2, "{:?}", names_in(spool.dir()));
        for path in &free {
            let left = fs::read(path).unwrap();
            assert!(
                !left.is_empty() && left.iter().all(|&b| b == 0),
                "not blanked"
            );
        }

        let second = commit_one(&spool).await;
        spool.update(&second).await.unwrap();
        assert!(free_files(spool.dir()).is_empty(), "free files not reused");
        let mut second_inodes = [
            inode(&spool.message_path(&second.queue_id)),
            inode(&spool.inner.path(&second.queue_id, ENVELOPE_EXT)),
        ];
        second_inodes.sort();
        first_inodes.sort();
        assert_eq!(first_inodes, second_inodes);
        assert_eq!(spool.load(&second.queue_id).unwrap(), second);
        assert_eq!(
            spool.read_message(&second.queue_id).unwrap(),
            b"Received: by test\r\nSubject: hi\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn random_queue_files_give_errors_never_panics() {
        use rand::Rng;
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let id = QueueId::generate();
        let mut rng = rand::rng();
        for round in 0..2000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                format!("{HEADER_MAGIC} {}\n", rng.random_range(0..200)).into_bytes()
            } else {
                HEADER_MAGIC.as_bytes().to_vec()
            };
            let tail = rng.random_range(0..300);
            bytes.extend((0..tail).map(|_| rng.random::<u8>()));
            fs::write(spool.message_path(&id), &bytes).unwrap();
            let _ = spool.load(&id);
            let _ = spool.read_message(&id);
        }
    }

    #[test]
    fn a_file_read_while_it_was_recycled_counts_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (named, other) = (dir.path().join("A.msg"), dir.path().join("free-1"));
        fs::write(&named, b"first").unwrap();
        fs::write(&other, b"second").unwrap();
        let file = File::open(&named).unwrap();
        assert!(ensure_still_named(&file, &named).is_ok());
        // Released: renamed away, then another file takes the name.
        fs::rename(&named, dir.path().join("free-2")).unwrap();
        let gone = ensure_still_named(&file, &named).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        fs::rename(&other, &named).unwrap();
        let replaced = ensure_still_named(&file, &named).unwrap_err();
        assert_eq!(replaced.kind(), io::ErrorKind::NotFound);
        assert_eq!(read_still_named(&named).unwrap(), b"second");
    }

    #[tokio::test]
    async fn large_finished_files_are_truncated_not_blanked() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let big = vec![b'a'; BLANK_AT_MOST as usize + 1];
        let env = envelope(&[&big]);
        spool.commit(&env, Arc::new(big.clone())).await.unwrap();
        spool.remove(&env.queue_id).await.unwrap();
        let free = free_files(spool.dir());
        assert_eq!(free.len(), 1);
        assert_eq!(fs::metadata(&free[0]).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn recover_takes_back_free_files_left_full_by_a_crash() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        // A crash between the rename to free-… and the blanking leaves old content, and
        // the file is longer than the next message.
        let leftover = spool.dir().join(format!("{FREE_PREFIX}00000000000000aa"));
        fs::write(&leftover, vec![b'x'; 10_000]).unwrap();

        let restarted = Spool::open(data.path()).unwrap();
        assert!(restarted.recover().unwrap().is_empty());
        let env = commit_one(&restarted).await;
        assert!(!leftover.exists(), "the free file was not reused");
        assert_eq!(
            restarted.read_message(&env.queue_id).unwrap(),
            b"Received: by test\r\nSubject: hi\r\n\r\nbody\r\n"
        );
    }

    #[tokio::test]
    async fn recover_drops_finished_messages_whose_removal_a_crash_lost() {
        // `remove` does not fsync: after a crash the old name can be back, holding the
        // zeros of the blanking, nothing (truncated), or the next message written into
        // the free file. Each was delivered; none may be delivered again or quarantined.
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let kept = commit_one(&spool).await;
        let blanked = commit_one(&spool).await;
        let truncated = commit_one(&spool).await;
        let reused = commit_one(&spool).await;
        let updated = commit_one(&spool).await;
        spool.update(&updated).await.unwrap();
        let zeros = |id: &QueueId| {
            let path = spool.message_path(id);
            let len = fs::metadata(&path).unwrap().len() as usize;
            fs::write(path, vec![0; len]).unwrap();
        };
        zeros(&blanked.queue_id);
        zeros(&updated.queue_id);
        fs::write(spool.message_path(&truncated.queue_id), b"").unwrap();
        fs::copy(
            spool.message_path(&kept.queue_id),
            spool.message_path(&reused.queue_id),
        )
        .unwrap();

        let restarted = Spool::open(data.path()).unwrap();
        assert_eq!(
            restarted.recover().unwrap(),
            std::slice::from_ref(&kept.queue_id)
        );
        assert_eq!(
            names_in(spool.dir()),
            [file_name(&kept.queue_id, MESSAGE_EXT)]
        );
    }

    #[tokio::test]
    async fn remove_deletes_both_files() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = commit_one(&spool).await;
        let kept = commit_one(&spool).await;
        spool.remove(&env.queue_id).await.unwrap();

        assert!(matches!(
            spool.load(&env.queue_id),
            Err(SpoolError::NotFound { .. })
        ));
        assert!(matches!(
            spool.read_message(&env.queue_id),
            Err(SpoolError::NotFound { .. })
        ));
        assert_eq!(spool.recover().unwrap(), [kept.queue_id]);
        // Removing again is harmless.
        spool.remove(&env.queue_id).await.unwrap();
    }

    #[tokio::test]
    async fn corrupt_envelope_is_an_error_and_set_aside_by_recover() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let good = commit_one(&spool).await;
        let bad = commit_one(&spool).await;
        let bad_env = spool.inner.path(&bad.queue_id, ENVELOPE_EXT);
        fs::write(&bad_env, b"{\"queue_id\": \"truncated").unwrap();

        let err = spool.load(&bad.queue_id);
        assert!(
            matches!(&err, Err(SpoolError::Corrupt { path, .. }) if *path == bad_env),
            "{err:?}"
        );

        assert_eq!(
            spool.recover().unwrap(),
            std::slice::from_ref(&good.queue_id)
        );
        let corrupt = spool.dir().join("corrupt");
        let id = &bad.queue_id;
        assert_eq!(
            names_in(&corrupt),
            [format!("{id}.env"), format!("{id}.msg")]
        );
        assert!(spool.load(&good.queue_id).is_ok());
    }

    #[tokio::test]
    async fn envelope_naming_another_id_is_corrupt() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let env = commit_one(&spool).await;
        let other = QueueId::generate();
        // Whether the envelope is in the .msg or in a .env.
        fs::copy(
            spool.message_path(&env.queue_id),
            spool.message_path(&other),
        )
        .unwrap();
        assert!(matches!(
            spool.load(&other),
            Err(SpoolError::Corrupt { .. })
        ));
        spool.update(&env).await.unwrap();
        fs::copy(
            spool.inner.path(&env.queue_id, ENVELOPE_EXT),
            spool.inner.path(&other, ENVELOPE_EXT),
        )
        .unwrap();
        assert!(matches!(
            spool.load(&other),
            Err(SpoolError::Corrupt { .. })
        ));
    }

    #[test]
    fn only_queue_items_parse_as_file_names() {
        let id = QueueId::generate();
        assert_eq!(
            parse_file_name(&format!("{id}.msg")),
            Some((id.clone(), MESSAGE_EXT))
        );
        assert_eq!(
            parse_file_name(&format!("{id}.env")),
            Some((id.clone(), ENVELOPE_EXT))
        );
        for stray in [
            format!("{id}.txt"),
            format!("{id}"),
            format!("{id}.env.bak"),
            "../x.env".into(),
        ] {
            assert_eq!(parse_file_name(&stray), None, "{stray}");
        }
    }

    #[tokio::test]
    async fn commit_into_a_missing_directory_is_an_io_error() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        fs::remove_dir(spool.dir()).unwrap();
        let parts: [&[u8]; 1] = [b"x"];
        let err = spool
            .commit(&envelope(&parts), Arc::new(b"x".to_vec()))
            .await;
        assert!(matches!(err, Err(SpoolError::Io { .. })), "{err:?}");
    }
}
