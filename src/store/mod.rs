//! Persistent state store: a checksummed append-only journal plus an atomic snapshot.
//!
//! Every change vxcd acknowledges is appended to the journal and synced to disk
//! (`fdatasync`) before [`Store::append`] / [`Store::append_batch`] return, so an answer
//! sent after them is never lost by a crash. [`Store::compact`] writes the whole state as a
//! snapshot and empties the journal, so replay cost stays proportional to the state plus
//! the changes since the last snapshot, never to the full history.
//!
//! The store is generic: it knows nothing of keys or VXCs, only of a record type `R`
//! (one change) and a snapshot type `S` (the whole state), both JSON via serde.
//!
//! # On-disk format (version 1)
//!
//! The state directory (e.g. `/var/lib/vxcd`) holds:
//!
//! * `lock`: empty; an exclusive `flock` on it is held while a store is open, so two
//!   daemons cannot share one directory (the second open fails with [`StoreError::Locked`]).
//! * `snapshot.json`: the state as of the last compaction (absent until the first one).
//! * `journal.log`: the changes made since that snapshot.
//! * `snapshot.json.tmp`: only transiently, while a compaction writes a new snapshot; a
//!   leftover one (crash mid-compaction) is incomplete, ignored and removed on open.
//!
//! ## `journal.log`
//!
//! One line per *entry*; an entry is one [`Store::append`] call (one record) or one
//! [`Store::append_batch`] call (all its records):
//!
//! ```text
//! <crc32> <first_seq> <count> <payload>\n
//! 3c1f09ab 18 1 [{"op":"key_activated","key":"..."}]
//! ```
//!
//! * `crc32`: exactly 8 lowercase hex digits, the CRC-32 (IEEE) of every byte after the
//!   space that follows it, up to but excluding the `\n` (so it covers `first_seq`,
//!   `count` and the payload).
//! * `first_seq`, `count`: decimal. Records are numbered 1, 2, 3, ... across the life of
//!   the directory; an entry holds records `first_seq ..= first_seq + count - 1`, and
//!   each entry starts right after the previous one (no gaps, no overlap).
//! * `payload`: a compact JSON array of exactly `count` records (JSON escapes newlines
//!   inside strings, so a payload never contains a raw `\n`).
//!
//! Because a batch is a single line under a single checksum, it is all-or-nothing on
//! replay: a batch interrupted by a crash fails its checksum (or lacks its `\n`) and is
//! dropped whole, never applied in part.
//!
//! ## `snapshot.json`
//!
//! Two lines, each one JSON document (so `jq . snapshot.json` shows both):
//!
//! ```text
//! {"format":"vxcd-state","version":2,"seq":17,"len":5321,"crc32":"0a1b2c3d"}
//! <the state as compact JSON, exactly len bytes>
//! ```
//!
//! `seq` is the last journal record the state includes (0: none); `crc32` is the CRC-32
//! of `"<seq> <len> "` followed by the `len` state bytes. The header's numbers are under the
//! checksum because a flipped `seq` would otherwise make replay skip acknowledged records
//! silently (found by fuzzing). Version 1 (checksum of the state bytes only) is still read, so
//! an upgrade opens its old snapshot; the next compaction writes version 2. The file is written to `snapshot.json.tmp`, synced, renamed
//! over `snapshot.json` and the directory synced; only then is the journal truncated. A
//! crash between the rename and the truncation leaves journal records the snapshot
//! already includes; replay skips every record with a sequence number `<= seq` (and open
//! finishes the interrupted truncation when nothing newer is in the journal).
//!
//! ## Compaction off the request path
//!
//! Encoding and syncing a snapshot of thousands of objects takes longer than a request may
//! wait, so the daemon writes it on another thread while appends go on:
//! [`Store::begin_compaction`] fixes the snapshot's `seq` (the last record appended) and starts
//! copying every later entry's line aside; [`Compaction::write`] writes the snapshot (anywhere,
//! blocking); [`Store::finish_compaction`] then replaces the journal by the entries appended
//! meanwhile (`journal.log.tmp`, synced, renamed over `journal.log`, directory synced). A crash
//! at any point leaves either the old journal (every record, those `<= seq` skipped) or the new
//! one (every record `> seq`); a leftover `journal.log.tmp` is removed at open.
//!
//! ## What open accepts and what it refuses
//!
//! * **Torn tail.** Only the last line of the journal can be cut short by a crash, since
//!   each entry is synced before the next is written and before it is acknowledged. A
//!   last line that lacks its `\n` or fails its checksum is therefore an entry that was
//!   never acknowledged: open reports it in [`Loaded::torn_tail`] (offset, length,
//!   preview), truncates it away so later appends start on a clean line, and succeeds.
//!   The caller should log it loudly.
//! * **Corruption** is anything else: a bad line followed by another line, an entry whose
//!   checksum holds but whose records do not decode, a sequence gap or overlap, a journal
//!   that does not continue the snapshot, a snapshot with a bad header, unknown format or
//!   version, wrong length or checksum, or a state that does not decode. Open returns
//!   [`StoreError::Corrupt`] naming the file, line and byte offset, and changes nothing
//!   on disk: the operator decides.
//!
//! A caveat worth knowing: a checksum failure on the *last* line is indistinguishable
//! from a torn write, so bit rot in the very last acknowledged entry would be dropped as
//! a torn tail (reported, not silent). So would a flip of the newline that ends the entry
//! before it, which joins the two into one damaged last line: both are dropped, reported (the
//! property tests in `src/proptests/store.rs` found this).
//!
//! ## Write failures
//!
//! If writing an entry fails (e.g. `ENOSPC`), the journal is cut back to its previous
//! length and synced, and the store stays usable. If that repair fails, or if
//! `fdatasync` itself fails (after which Linux gives no guarantee about what reached the
//! disk), the store refuses writes with [`StoreError::Poisoned`] until [`Store::recover`]
//! (tried before every write, and periodically by the daemon) has cut the journal back to
//! its last acknowledged entry and synced it. [`Store::failure`] says why meanwhile.
//! A compaction that fails removes its partial `snapshot.json.tmp` at once (a full disk
//! stays full otherwise) and leaves the journal, which still holds everything, untouched.
//!
//! ## Who may read and write it
//!
//! The directory is created 0700 and every file 0600 whatever the umask (the journal holds
//! every service key); files are opened with `O_NOFOLLOW`, so a symlink planted in the
//! directory is an error, never a way to overwrite its target. A state directory that is a
//! symlink, is owned by another user, or is writable by group or others is refused
//! ([`StoreError::Unsafe`]): whoever can write there can forge a key with a valid CRC.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;

mod compaction;
mod files;
mod format;

pub use compaction::Compaction;
use files::{check_dir, io_err, private_file, read_private, remove_if_present, sync_dir};
use format::{encode_entry, read_snapshot, scan_journal};

const SNAPSHOT_FILE: &str = "snapshot.json";
const SNAPSHOT_TMP_FILE: &str = "snapshot.json.tmp";
const JOURNAL_FILE: &str = "journal.log";
const JOURNAL_TMP_FILE: &str = "journal.log.tmp";
const LOCK_FILE: &str = "lock";
const SNAPSHOT_FORMAT: &str = "vxcd-state";
const SNAPSHOT_VERSION: u32 = 2;
/// The version whose checksum covers the state bytes only; read, never written.
const SNAPSHOT_VERSION_STATE_ONLY: u32 = 1;
/// How many bytes of a torn tail [`TornTail::preview`] shows: enough to recognise it.
const PREVIEW_BYTES: usize = 80;
/// Mode of the state directory and of every file in it, whatever the umask: the journal holds
/// every service key, so only the daemon's user may read it.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Free bytes at which a store whose last write failed is deemed able to write again.
const MIN_ROOM: u64 = 64 * 1024;

/// Why the store failed. Every variant names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the store was doing, e.g. "appending to journal".
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("state directory {} is locked by another process (is another vxcd running on it?)", dir.display())]
    Locked { dir: PathBuf },
    #[error("{} is corrupt at line {line} (byte offset {offset}): {cause}", file.display())]
    Corrupt {
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Byte offset of the start of that line.
        offset: u64,
        cause: String,
    },
    #[error("encoding {what} for {} as JSON: {source}", path.display())]
    Encode {
        what: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("store at {} refuses writes after an earlier failure ({cause}); it retries the repair before each write", dir.display())]
    Poisoned { dir: PathBuf, cause: String },
    #[error("state directory {}: {cause}; refusing to use it", dir.display())]
    Unsafe { dir: PathBuf, cause: String },
}

/// A last journal entry that a crash cut short; it was never acknowledged and has been
/// removed from the journal by [`Store::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Byte offset in `journal.log` where the torn entry started.
    pub offset: u64,
    /// Its length in bytes (all of it was dropped).
    pub len: u64,
    /// Its first bytes, lossily decoded and escaped, for the log.
    pub preview: String,
    /// Why it was judged torn, e.g. "no terminating newline".
    pub cause: String,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dropped a torn, unacknowledged journal entry of {} bytes at offset {} ({}): \"{}\"",
            self.len, self.offset, self.cause, self.preview
        )
    }
}

/// What [`Store::open`] read: replay `records` in order on top of `snapshot`.
#[derive(Debug)]
pub struct Loaded<S, R> {
    /// The last compacted state, `None` if no compaction ever happened.
    pub snapshot: Option<S>,
    /// Journal records newer than the snapshot, oldest first.
    pub records: Vec<R>,
    /// Set if a torn last entry was found (and truncated away).
    pub torn_tail: Option<TornTail>,
}

/// An open state directory, exclusively locked. Single writer: all writes go through
/// `&mut self`.
#[derive(Debug)]
pub struct Store<R> {
    dir: PathBuf,
    journal_path: PathBuf,
    journal: File,
    /// Length of the journal's valid content; a failed write is cut back to it.
    journal_bytes: u64,
    /// Sequence number the next record gets.
    next_seq: u64,
    /// Records in the journal newer than the snapshot.
    records_since_snapshot: usize,
    /// Set once the on-disk state is unknown; every later write is refused with it.
    poisoned: Option<String>,
    /// The last write failed cleanly (e.g. `ENOSPC`, cut back): nothing is lost, but the store
    /// cannot take changes. Cleared by the next successful write, or once the file system has room.
    write_failed: Option<String>,
    /// While a compaction runs: the journal lines appended since it began, and their records.
    tail: Option<(Vec<u8>, usize)>,
    /// Held for the store's lifetime; dropping it releases the lock.
    _lock: Flock<File>,
    _record: PhantomData<fn(&R)>,
}

impl<R: Serialize + DeserializeOwned> Store<R> {
    /// Opens the state directory `dir` (creating it if needed), takes its lock, and reads
    /// the snapshot and journal. On corruption nothing on disk is changed.
    pub fn open<S: DeserializeOwned>(dir: &Path) -> Result<(Self, Loaded<S, R>), StoreError> {
        let dir = dir.to_path_buf();
        let dir_existed = fs::symlink_metadata(&dir).is_ok();
        if !dir_existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err("creating parent of", &dir))?;
            }
            fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(&dir)
                .map_err(io_err("creating state directory", &dir))?;
            // The umask may have narrowed the mode further; never wider than DIR_MODE.
            fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(io_err("setting the mode of", &dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        check_dir(&dir)?;

        let lock_path = dir.join(LOCK_FILE);
        let lock_file = private_file(OpenOptions::new().create(true).truncate(false).write(true))
            .open(&lock_path)
            .map_err(io_err("opening lock file", &lock_path))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Locked { dir }),
            Err((_, errno)) => {
                return Err(StoreError::Io {
                    action: "locking",
                    path: lock_path,
                    source: io::Error::from(errno),
                })
            }
        };

        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let (snapshot, snapshot_seq) = read_snapshot::<S>(&snapshot_path)?;

        let journal_path = dir.join(JOURNAL_FILE);
        let journal_content = match read_private(&journal_path) {
            Ok(content) => content,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("reading journal", &journal_path)(e)),
        };
        let replay = scan_journal::<R>(&journal_path, &journal_content, snapshot_seq)?;

        // Everything is validated; only now repair what a crash left behind.
        let journal = private_file(OpenOptions::new().create(true).append(true))
            .open(&journal_path)
            .map_err(io_err("opening journal", &journal_path))?;
        // Files an older vxcd created under umask 022 were 0644: narrow them (fchmod, no path).
        for (file, path) in [(&journal, &journal_path), (&*lock, &lock_path)] {
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                .map_err(io_err("setting the mode of", path))?;
        }
        if snapshot.is_some() {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&snapshot_path)
                .and_then(|f| f.set_permissions(fs::Permissions::from_mode(FILE_MODE)))
                .map_err(io_err("setting the mode of", &snapshot_path))?;
        }
        let keep_bytes = if replay.records.is_empty() {
            // Nothing newer than the snapshot: finish a truncation a crash interrupted.
            0
        } else {
            replay.valid_bytes
        };
        if keep_bytes != journal_content.len() as u64 {
            journal
                .set_len(keep_bytes)
                .and_then(|()| journal.sync_all())
                .map_err(io_err("truncating journal", &journal_path))?;
        }
        for leftover in [SNAPSHOT_TMP_FILE, JOURNAL_TMP_FILE] {
            let tmp_path = dir.join(leftover);
            remove_if_present(&tmp_path).map_err(io_err("removing leftover", &tmp_path))?;
        }
        // Makes a newly created journal or lock file, or a removal, durable.
        sync_dir(&dir)?;

        let store = Store {
            dir,
            journal_path,
            journal,
            journal_bytes: keep_bytes,
            next_seq: replay.last_seq.max(snapshot_seq) + 1,
            records_since_snapshot: replay.records.len(),
            poisoned: None,
            write_failed: None,
            tail: None,
            _lock: lock,
            _record: PhantomData,
        };
        let loaded = Loaded {
            snapshot,
            records: replay.records,
            torn_tail: replay.torn_tail,
        };
        Ok((store, loaded))
    }

    /// Appends one record; returns only once it is on disk (write + `fdatasync`).
    pub fn append(&mut self, record: &R) -> Result<(), StoreError> {
        self.append_batch(std::slice::from_ref(record))
    }

    /// Appends several records with one `fdatasync`, as one journal entry: on replay
    /// either all of them are there or (if a crash tore the entry) none. An empty batch
    /// writes nothing.
    pub fn append_batch(&mut self, records: &[R]) -> Result<(), StoreError> {
        self.recover()?;
        if records.is_empty() {
            return Ok(());
        }
        let line = encode_entry(self.next_seq, records).map_err(|source| StoreError::Encode {
            what: "journal records",
            path: self.journal_path.clone(),
            source,
        })?;

        if let Err(e) = self.journal.write_all(&line) {
            // A partial line would make every later entry look like corruption: cut it off.
            let repair = self
                .journal
                .set_len(self.journal_bytes)
                .and_then(|()| self.journal.sync_all());
            if let Err(repair_err) = repair {
                self.poisoned = Some(format!(
                    "a failed append ({e}) could not be cut back from {}: {repair_err}",
                    self.journal_path.display()
                ));
            }
            self.write_failed = Some(format!("appending to {}: {e}", self.journal_path.display()));
            return Err(io_err("appending to journal", &self.journal_path)(e));
        }
        if let Err(e) = self.journal.sync_data() {
            self.poisoned = Some(format!(
                "fdatasync of {} failed: {e}",
                self.journal_path.display()
            ));
            return Err(io_err("syncing journal", &self.journal_path)(e));
        }
        self.journal_bytes += line.len() as u64;
        self.write_failed = None;
        self.next_seq += records.len() as u64;
        self.records_since_snapshot += records.len();
        if let Some((lines, count)) = &mut self.tail {
            lines.extend_from_slice(&line);
            *count += records.len();
        }
        Ok(())
    }

    /// Starts a compaction whose snapshot must hold every record appended so far (and no later
    /// one): write it with [`Compaction::write`] on any thread, then hand the outcome to
    /// [`Store::finish_compaction`]. Appends go on meanwhile.
    pub fn begin_compaction(&mut self) -> Result<Compaction, StoreError> {
        self.recover()?;
        self.tail = Some((Vec::new(), 0));
        Ok(Compaction {
            seq: self.next_seq - 1,
            snapshot_path: self.dir.join(SNAPSHOT_FILE),
            tmp_path: self.dir.join(SNAPSHOT_TMP_FILE),
            dir: self.dir.clone(),
        })
    }

    /// Ends a compaction: once its snapshot is durable, the journal keeps only the entries
    /// appended since it began. A failed snapshot leaves the journal as it is (it still holds
    /// everything) and is reported like a failed write.
    pub fn finish_compaction(&mut self, written: Result<(), StoreError>) -> Result<(), StoreError> {
        let Some((lines, count)) = self.tail.take() else {
            return Ok(());
        };
        if let Err(e) = written {
            self.write_failed = Some(e.to_string());
            return Err(e);
        }
        // The snapshot is durable: records up to its seq are skipped on replay, so the journal
        // is correct as it is, merely longer, whatever happens below.
        self.records_since_snapshot = count;
        if self.poisoned.is_some() {
            // The journal's length on disk is unknown until recover() repairs it; leave it.
            return Ok(());
        }
        if lines.is_empty() {
            if let Err(e) = self.journal.set_len(0) {
                return Err(io_err("truncating journal", &self.journal_path)(e));
            }
            if let Err(e) = self.journal.sync_all() {
                self.poisoned = Some(format!(
                    "fsync of {} after truncation failed: {e}",
                    self.journal_path.display()
                ));
                return Err(io_err("syncing journal", &self.journal_path)(e));
            }
            self.journal_bytes = 0;
            return Ok(());
        }
        let tmp_path = self.dir.join(JOURNAL_TMP_FILE);
        let write_tmp = || -> io::Result<File> {
            remove_if_present(&tmp_path)?;
            let mut tmp =
                private_file(OpenOptions::new().append(true).create_new(true)).open(&tmp_path)?;
            tmp.write_all(&lines)?;
            tmp.sync_all()?;
            Ok(tmp)
        };
        let replaced = write_tmp()
            .map_err(io_err("writing journal", &tmp_path))
            .and_then(|tmp| {
                fs::rename(&tmp_path, &self.journal_path)
                    .map_err(io_err("renaming into", &self.journal_path))?;
                Ok(tmp)
            });
        match replaced {
            Ok(tmp) => {
                self.journal = tmp;
                self.journal_bytes = lines.len() as u64;
                sync_dir(&self.dir)
            }
            Err(e) => {
                // The old journal stays, whole: only its length is wasted until next time.
                let _ = remove_if_present(&tmp_path);
                Err(e)
            }
        }
    }

    /// Makes `snapshot` the new base state and empties the journal, in one call
    /// ([`Store::begin_compaction`] does it without blocking appends). `snapshot` must
    /// include every record appended so far. The snapshot is replaced atomically
    /// (temporary file, fsync, rename, directory fsync) before the journal is touched.
    pub fn compact<S: Serialize>(&mut self, snapshot: &S) -> Result<(), StoreError> {
        let job = self.begin_compaction()?;
        let written = job.write(snapshot);
        self.finish_compaction(written)
    }

    /// Records appended since the last snapshot (including those replayed on open), so
    /// the caller can decide when to compact.
    pub fn journal_len(&self) -> usize {
        self.records_since_snapshot
    }

    /// Sequence number of the last record appended (0 if none ever was).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the store refuses writes or the last one failed, `None` while it is healthy.
    pub fn failure(&self) -> Option<&str> {
        self.poisoned.as_deref().or(self.write_failed.as_deref())
    }

    /// After a failure left the journal's length unknown, cuts it back to the last acknowledged
    /// entry and syncs it; when that works the store is healthy again. Called before every write
    /// and by the daemon's periodic tick, so a store that failed on a full disk recovers once
    /// space is back, without a restart.
    pub fn recover(&mut self) -> Result<(), StoreError> {
        if let Some(cause) = &self.write_failed {
            // Room again for a few entries and a snapshot: call it healthy; a write that still
            // fails sets it again.
            let room = nix::sys::statvfs::statvfs(&self.dir)
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
                .unwrap_or(0);
            if room >= MIN_ROOM {
                self.write_failed = None;
            } else if self.poisoned.is_none() {
                return Err(StoreError::Poisoned {
                    dir: self.dir.clone(),
                    cause: format!("{cause}; {room} bytes free"),
                });
            }
        }
        let Some(cause) = self.poisoned.clone() else {
            return Ok(());
        };
        let repaired = self
            .journal
            .set_len(self.journal_bytes)
            .and_then(|()| self.journal.sync_all());
        match repaired {
            Ok(()) => {
                self.poisoned = None;
                Ok(())
            }
            Err(e) => Err(StoreError::Poisoned {
                dir: self.dir.clone(),
                cause: format!("{cause}; repair failed again: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
