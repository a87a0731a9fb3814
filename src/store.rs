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
//! {"format":"vxcd-state","version":1,"seq":17,"len":5321,"crc32":"0a1b2c3d"}
//! <the state as compact JSON, exactly len bytes>
//! ```
//!
//! `seq` is the last journal record the state includes (0: none); `crc32` is the CRC-32
//! of the `len` state bytes. The file is written to `snapshot.json.tmp`, synced, renamed
//! over `snapshot.json` and the directory synced; only then is the journal truncated. A
//! crash between the rename and the truncation leaves journal records the snapshot
//! already includes; replay skips every record with a sequence number `<= seq` (and open
//! finishes the interrupted truncation when nothing newer is in the journal).
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
//! a torn tail (reported, not silent).
//!
//! ## Write failures
//!
//! If writing an entry fails (e.g. `ENOSPC`), the journal is cut back to its previous
//! length and synced, and the store stays usable. If that repair fails, or if
//! `fdatasync` itself fails (after which Linux gives no guarantee about what reached the
//! disk), the store refuses all further writes with [`StoreError::Poisoned`]; the daemon
//! must restart and reopen, which re-reads the truth from disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const SNAPSHOT_FILE: &str = "snapshot.json";
const SNAPSHOT_TMP_FILE: &str = "snapshot.json.tmp";
const JOURNAL_FILE: &str = "journal.log";
const LOCK_FILE: &str = "lock";
const SNAPSHOT_FORMAT: &str = "vxcd-state";
const SNAPSHOT_VERSION: u32 = 1;
/// How many bytes of a torn tail [`TornTail::preview`] shows: enough to recognise it.
const PREVIEW_BYTES: usize = 80;

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
    #[error("store at {} refuses writes after an earlier failure ({cause}); restart to reopen it", dir.display())]
    Poisoned { dir: PathBuf, cause: String },
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
    /// Held for the store's lifetime; dropping it releases the lock.
    _lock: Flock<File>,
    _record: PhantomData<fn(&R)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: String,
    version: u32,
    seq: u64,
    len: u64,
    crc32: String,
}

impl<R: Serialize + DeserializeOwned> Store<R> {
    /// Opens the state directory `dir` (creating it if needed), takes its lock, and reads
    /// the snapshot and journal. On corruption nothing on disk is changed.
    pub fn open<S: DeserializeOwned>(dir: &Path) -> Result<(Self, Loaded<S, R>), StoreError> {
        let dir = dir.to_path_buf();
        let dir_existed = dir.is_dir();
        fs::create_dir_all(&dir).map_err(io_err("creating state directory", &dir))?;
        if !dir_existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }

        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
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
        let journal_content = match fs::read(&journal_path) {
            Ok(content) => content,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("reading journal", &journal_path)(e)),
        };
        let replay = scan_journal::<R>(&journal_path, &journal_content, snapshot_seq)?;

        // Everything is validated; only now repair what a crash left behind.
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(io_err("opening journal", &journal_path))?;
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
        let tmp_path = dir.join(SNAPSHOT_TMP_FILE);
        match fs::remove_file(&tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing leftover", &tmp_path)(e)),
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
        self.check_poisoned()?;
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
        self.next_seq += records.len() as u64;
        self.records_since_snapshot += records.len();
        Ok(())
    }

    /// Makes `snapshot` the new base state and empties the journal. `snapshot` must
    /// include every record appended so far. The snapshot is replaced atomically
    /// (temporary file, fsync, rename, directory fsync) before the journal is touched.
    pub fn compact<S: Serialize>(&mut self, snapshot: &S) -> Result<(), StoreError> {
        self.check_poisoned()?;
        let snapshot_path = self.dir.join(SNAPSHOT_FILE);
        let tmp_path = self.dir.join(SNAPSHOT_TMP_FILE);
        let content =
            encode_snapshot(self.next_seq - 1, snapshot).map_err(|source| StoreError::Encode {
                what: "snapshot",
                path: snapshot_path.clone(),
                source,
            })?;

        let write_tmp = || -> io::Result<()> {
            let mut tmp = File::create(&tmp_path)?;
            tmp.write_all(&content)?;
            tmp.sync_all()
        };
        write_tmp().map_err(io_err("writing snapshot", &tmp_path))?;
        fs::rename(&tmp_path, &snapshot_path).map_err(io_err("renaming into", &snapshot_path))?;
        sync_dir(&self.dir)?;

        // The snapshot is durable; records up to its seq are now skipped on replay, so a
        // journal left untruncated is still correct, merely longer.
        self.records_since_snapshot = 0;
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
        Ok(())
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

    fn check_poisoned(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(cause) => Err(StoreError::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

fn encode_entry<R: Serialize>(first_seq: u64, records: &[R]) -> serde_json::Result<Vec<u8>> {
    let mut body = format!("{first_seq} {} ", records.len()).into_bytes();
    serde_json::to_writer(&mut body, records)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&body)).into_bytes();
    line.extend_from_slice(&body);
    line.push(b'\n');
    Ok(line)
}

fn encode_snapshot<S: Serialize>(seq: u64, state: &S) -> serde_json::Result<Vec<u8>> {
    let state_json = serde_json::to_vec(state)?;
    let header = SnapshotHeader {
        format: SNAPSHOT_FORMAT.to_string(),
        version: SNAPSHOT_VERSION,
        seq,
        len: state_json.len() as u64,
        crc32: format!("{:08x}", crc32fast::hash(&state_json)),
    };
    let mut content = serde_json::to_vec(&header)?;
    content.push(b'\n');
    content.extend_from_slice(&state_json);
    content.push(b'\n');
    Ok(content)
}

/// Reads `snapshot.json`: `(None, 0)` if absent, else the state and the last seq it holds.
fn read_snapshot<S: DeserializeOwned>(path: &Path) -> Result<(Option<S>, u64), StoreError> {
    let content = match fs::read(path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, 0)),
        Err(e) => return Err(io_err("reading snapshot", path)(e)),
    };
    let corrupt = |line: u64, offset: usize, cause: String| StoreError::Corrupt {
        file: path.to_path_buf(),
        line,
        offset: offset as u64,
        cause,
    };
    let header_end = content
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt(1, 0, "no header line (file has no newline)".to_string()))?;
    let header: SnapshotHeader = serde_json::from_slice(&content[..header_end])
        .map_err(|e| corrupt(1, 0, format!("header is not a snapshot header: {e}")))?;
    if header.format != SNAPSHOT_FORMAT || header.version != SNAPSHOT_VERSION {
        return Err(corrupt(
            1,
            0,
            format!(
                "format {:?} version {}; this vxcd reads only {SNAPSHOT_FORMAT:?} version {SNAPSHOT_VERSION}",
                header.format, header.version
            ),
        ));
    }
    let state_start = header_end + 1;
    let body = &content[state_start..];
    let expected_len = usize::try_from(header.len).unwrap_or(usize::MAX);
    if body.len() != expected_len.saturating_add(1) || body.last() != Some(&b'\n') {
        return Err(corrupt(
            2,
            state_start,
            format!(
                "header announces {} state bytes plus newline, file holds {} bytes after the header",
                header.len,
                body.len()
            ),
        ));
    }
    let state_json = &body[..expected_len];
    let crc = format!("{:08x}", crc32fast::hash(state_json));
    if crc != header.crc32 {
        return Err(corrupt(
            2,
            state_start,
            format!("state checksum is {crc}, header says {}", header.crc32),
        ));
    }
    let state = serde_json::from_slice(state_json)
        .map_err(|e| corrupt(2, state_start, format!("state does not decode: {e}")))?;
    Ok((Some(state), header.seq))
}

struct Replay<R> {
    /// Records newer than the snapshot, in order.
    records: Vec<R>,
    /// Last sequence number in the journal's valid part (0 if it has no entry).
    last_seq: u64,
    /// Length of the journal without its torn tail.
    valid_bytes: u64,
    torn_tail: Option<TornTail>,
}

/// Why one journal line is unusable.
enum LineFault {
    /// Checksum, header or terminator wrong: what a torn write looks like.
    Damaged(String),
    /// Checksum holds, so the bytes are what was written, yet they do not make sense.
    Invalid(String),
}

struct Entry<R> {
    first_seq: u64,
    records: Vec<R>,
}

fn parse_line<R: DeserializeOwned>(line: &[u8]) -> Result<Entry<R>, LineFault> {
    let (crc_field, body) = match line.iter().position(|&b| b == b' ') {
        Some(8) => (&line[..8], &line[9..]),
        _ => {
            return Err(LineFault::Damaged(
                "does not start with an 8-digit checksum".to_string(),
            ))
        }
    };
    let stored_crc = std::str::from_utf8(crc_field)
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| LineFault::Damaged("checksum field is not hexadecimal".to_string()))?;
    let actual_crc = crc32fast::hash(body);
    if stored_crc != actual_crc {
        return Err(LineFault::Damaged(format!(
            "checksum is {actual_crc:08x}, line says {stored_crc:08x}"
        )));
    }
    let mut fields = body.splitn(3, |&b| b == b' ');
    let mut number = |name: &str| {
        fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| LineFault::Invalid(format!("{name} is not a number")))
    };
    let first_seq = number("sequence number")?;
    let count = number("record count")?;
    let payload = fields
        .next()
        .ok_or_else(|| LineFault::Invalid("no payload".to_string()))?;
    let records: Vec<R> = serde_json::from_slice(payload)
        .map_err(|e| LineFault::Invalid(format!("records do not decode: {e}")))?;
    if first_seq == 0 || count == 0 || records.len() as u64 != count {
        return Err(LineFault::Invalid(format!(
            "entry claims seq {first_seq} and {count} records, holds {}",
            records.len()
        )));
    }
    Ok(Entry { first_seq, records })
}

fn scan_journal<R: DeserializeOwned>(
    path: &Path,
    content: &[u8],
    snapshot_seq: u64,
) -> Result<Replay<R>, StoreError> {
    let corrupt = |line: u64, offset: usize, cause: String| StoreError::Corrupt {
        file: path.to_path_buf(),
        line,
        offset: offset as u64,
        cause,
    };
    let mut replay = Replay {
        records: Vec::new(),
        last_seq: 0,
        valid_bytes: 0,
        torn_tail: None,
    };
    let mut line_start = 0;
    let mut line_no = 0u64;
    // Where the last good entry is, to name it if the journal ends too early.
    let mut last_entry_at = (0u64, 0usize);
    while line_start < content.len() {
        line_no += 1;
        let rest = &content[line_start..];
        let newline = rest.iter().position(|&b| b == b'\n');
        let line_end = newline.map_or(content.len(), |i| line_start + i);
        let next_start = newline.map_or(content.len(), |_| line_end + 1);
        let is_last = next_start == content.len();

        let parsed = match newline {
            None => Err(LineFault::Damaged("no terminating newline".to_string())),
            Some(_) => parse_line::<R>(&content[line_start..line_end]),
        };
        let entry = match parsed {
            Ok(entry) => entry,
            Err(LineFault::Damaged(cause)) if is_last => {
                let torn = &content[line_start..];
                let shown = &torn[..torn.len().min(PREVIEW_BYTES)];
                replay.torn_tail = Some(TornTail {
                    offset: line_start as u64,
                    len: torn.len() as u64,
                    preview: String::from_utf8_lossy(shown).escape_debug().to_string(),
                    cause,
                });
                break;
            }
            Err(LineFault::Damaged(cause)) => {
                return Err(corrupt(
                    line_no,
                    line_start,
                    format!("{cause}, and more journal follows (not a torn last write)"),
                ))
            }
            Err(LineFault::Invalid(cause)) => return Err(corrupt(line_no, line_start, cause)),
        };

        let count = entry.records.len() as u64;
        let expected_first = if replay.last_seq == 0 {
            // The journal's first entry: it must not leave a gap after the snapshot.
            if entry.first_seq > snapshot_seq + 1 {
                return Err(corrupt(
                    line_no,
                    line_start,
                    format!(
                        "journal starts at seq {}, but the snapshot only covers up to seq {snapshot_seq}: records are missing",
                        entry.first_seq
                    ),
                ));
            }
            entry.first_seq
        } else {
            replay.last_seq + 1
        };
        if entry.first_seq != expected_first {
            return Err(corrupt(
                line_no,
                line_start,
                format!(
                    "entry starts at seq {}, expected {expected_first}",
                    entry.first_seq
                ),
            ));
        }
        let last_seq = entry
            .first_seq
            .checked_add(count - 1)
            .ok_or_else(|| corrupt(line_no, line_start, "sequence number overflows".to_string()))?;
        if entry.first_seq <= snapshot_seq && last_seq > snapshot_seq {
            return Err(corrupt(
                line_no,
                line_start,
                format!(
                    "entry holds seq {}..={last_seq}, but the snapshot ends inside it at seq {snapshot_seq}",
                    entry.first_seq
                ),
            ));
        }
        if entry.first_seq > snapshot_seq {
            replay.records.extend(entry.records);
        }
        replay.last_seq = last_seq;
        replay.valid_bytes = next_start as u64;
        last_entry_at = (line_no, line_start);
        line_start = next_start;
    }
    if replay.last_seq != 0 && replay.last_seq < snapshot_seq {
        return Err(corrupt(
            last_entry_at.0,
            last_entry_at.1,
            format!(
                "journal ends at seq {}, before the snapshot's seq {snapshot_seq}: it does not belong to this snapshot",
                replay.last_seq
            ),
        ));
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        id: u32,
        name: String,
    }

    type State = Vec<Rec>;

    fn rec(id: u32) -> Rec {
        Rec {
            id,
            name: format!("vxc-{id} \"quoted\"\nnewline"),
        }
    }

    fn open(dir: &Path) -> (Store<Rec>, Loaded<State, Rec>) {
        Store::<Rec>::open::<State>(dir).expect("open store")
    }

    fn open_err(dir: &Path) -> StoreError {
        match Store::<Rec>::open::<State>(dir) {
            Ok(_) => panic!("open of {} succeeded, expected an error", dir.display()),
            Err(e) => e,
        }
    }

    fn journal(dir: &Path) -> PathBuf {
        dir.join(JOURNAL_FILE)
    }

    /// Byte offset at which each line of `content` starts.
    fn line_starts(content: &[u8]) -> Vec<usize> {
        let mut starts = vec![0];
        starts.extend(
            content
                .iter()
                .enumerate()
                .filter(|(i, &b)| b == b'\n' && i + 1 < content.len())
                .map(|(i, _)| i + 1),
        );
        starts
    }

    fn assert_corrupt(err: StoreError, file: &Path, line: u64, offset: u64, cause_part: &str) {
        let shown = err.to_string();
        match err {
            StoreError::Corrupt {
                file: f,
                line: l,
                offset: o,
                cause,
            } => {
                assert_eq!(f, file, "{shown}");
                assert_eq!((l, o), (line, offset), "{shown}");
                assert!(
                    cause.contains(cause_part),
                    "cause {cause:?} lacks {cause_part:?}"
                );
                assert!(shown.contains(&file.display().to_string()), "{shown}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        {
            let (mut store, loaded) = open(&dir);
            assert!(loaded.snapshot.is_none());
            assert!(loaded.records.is_empty());
            assert!(loaded.torn_tail.is_none());
            for id in 1..=3 {
                store.append(&rec(id)).unwrap();
            }
            store.append_batch(&[]).unwrap();
            assert_eq!(store.journal_len(), 3);
            assert_eq!(store.last_seq(), 3);
        }
        let (store, loaded) = open(&dir);
        assert_eq!(loaded.records, vec![rec(1), rec(2), rec(3)]);
        assert!(loaded.torn_tail.is_none());
        assert_eq!(store.journal_len(), 3);
        assert_eq!(store.last_seq(), 3);
        // One entry per append, the empty batch wrote nothing.
        let content = fs::read(journal(&dir)).unwrap();
        assert_eq!(content.iter().filter(|&&b| b == b'\n').count(), 3);
        assert!(content.starts_with(&encode_entry(1, &[rec(1)]).unwrap()));
    }

    #[test]
    fn many_records_in_singles_and_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        {
            let (mut store, _) = open(tmp.path());
            let mut id = 0;
            for batch_size in [1usize, 7, 1, 500, 1, 1, 3000, 2] {
                let batch: Vec<Rec> = (0..batch_size)
                    .map(|_| {
                        id += 1;
                        rec(id)
                    })
                    .collect();
                if batch_size == 1 {
                    store.append(&batch[0]).unwrap();
                } else {
                    store.append_batch(&batch).unwrap();
                }
                expected.extend(batch);
            }
            assert_eq!(store.last_seq(), expected.len() as u64);
        }
        let (store, loaded) = open(tmp.path());
        assert_eq!(loaded.records, expected);
        assert_eq!(store.journal_len(), expected.len());
        assert_eq!(store.last_seq(), expected.len() as u64);
    }

    #[test]
    fn reopen_after_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let state: State = (1..=10).map(rec).collect();
        {
            let (mut store, _) = open(tmp.path());
            store.append_batch(&state).unwrap();
            store.compact(&state).unwrap();
            assert_eq!(store.journal_len(), 0);
            assert_eq!(fs::metadata(journal(tmp.path())).unwrap().len(), 0);
        }
        {
            let (mut store, loaded) = open(tmp.path());
            assert_eq!(loaded.snapshot.as_ref(), Some(&state));
            assert!(loaded.records.is_empty());
            assert_eq!(store.last_seq(), 10);
            store.append(&rec(11)).unwrap();
            store.append(&rec(12)).unwrap();
        }
        let (store, loaded) = open(tmp.path());
        assert_eq!(loaded.snapshot, Some(state));
        assert_eq!(loaded.records, vec![rec(11), rec(12)]);
        assert_eq!(store.journal_len(), 2);
        assert_eq!(store.last_seq(), 12);
        let header = fs::read_to_string(tmp.path().join(SNAPSHOT_FILE)).unwrap();
        assert!(
            header.starts_with(r#"{"format":"vxcd-state","version":1,"seq":10,"#),
            "{header}"
        );
    }

    #[test]
    fn torn_tail_without_newline_is_dropped_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            for id in 1..=3 {
                store.append(&rec(id)).unwrap();
            }
        }
        let good_len = fs::metadata(journal(tmp.path())).unwrap().len();
        // A crash in the middle of writing entry 4.
        let entry = encode_entry(4, &[rec(4)]).unwrap();
        let torn = &entry[..entry.len() / 2];
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal(tmp.path()))
            .unwrap();
        file.write_all(torn).unwrap();
        drop(file);

        {
            let (mut store, loaded) = open(tmp.path());
            assert_eq!(loaded.records, vec![rec(1), rec(2), rec(3)]);
            let tail = loaded.torn_tail.expect("torn tail reported");
            assert_eq!(tail.offset, good_len);
            assert_eq!(tail.len, torn.len() as u64);
            assert!(tail.preview.starts_with(&format!(
                "{:08x} 4 1 [",
                crc32fast::hash(&entry[9..entry.len() - 1])
            )));
            assert!(tail.cause.contains("newline"), "{}", tail.cause);
            // Cut away on open, so the next append starts on a clean line.
            assert_eq!(fs::metadata(journal(tmp.path())).unwrap().len(), good_len);
            assert_eq!(store.last_seq(), 3);
            store.append(&rec(40)).unwrap();
        }
        let (_, loaded) = open(tmp.path());
        assert_eq!(loaded.records, vec![rec(1), rec(2), rec(3), rec(40)]);
        assert!(loaded.torn_tail.is_none());
    }

    #[test]
    fn torn_tail_with_bad_checksum_is_dropped_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            for id in 1..=4 {
                store.append(&rec(id)).unwrap();
            }
        }
        let path = journal(tmp.path());
        let mut content = fs::read(&path).unwrap();
        let last_start = *line_starts(&content).last().unwrap();
        // A page that never reached the disk reads back as zeros; the newline did land.
        let hole_end = content.len() - 5;
        content[last_start + 20..hole_end].fill(0);
        fs::write(&path, &content).unwrap();

        let (_, loaded) = open(tmp.path());
        assert_eq!(loaded.records, vec![rec(1), rec(2), rec(3)]);
        let tail = loaded.torn_tail.expect("torn tail reported");
        assert_eq!(tail.offset, last_start as u64);
        assert_eq!(tail.len, (content.len() - last_start) as u64);
        assert!(tail.cause.contains("checksum"), "{}", tail.cause);
        assert!(tail.to_string().contains(&format!("offset {last_start}")));
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
    }

    #[test]
    fn torn_batch_is_dropped_whole() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            store.append(&rec(1)).unwrap();
            store.append(&rec(2)).unwrap();
            store
                .append_batch(&[rec(3), rec(4), rec(5), rec(6)])
                .unwrap();
        }
        let path = journal(tmp.path());
        let content = fs::read(&path).unwrap();
        let batch_start = line_starts(&content)[2];
        // Cut the batch right after its third record: records 3..=5 are complete JSON.
        let batch = &content[batch_start..];
        let cut = batch_start
            + batch
                .windows(7)
                .position(|w| w == br#"{"id":6"#)
                .expect("record 6 in batch");
        fs::write(&path, &content[..cut]).unwrap();

        let (mut store, loaded) = open(tmp.path());
        assert_eq!(loaded.records, vec![rec(1), rec(2)]);
        assert_eq!(
            loaded.torn_tail.as_ref().unwrap().offset,
            batch_start as u64
        );
        assert_eq!(store.last_seq(), 2);
        assert_eq!(store.journal_len(), 2);
        store.append(&rec(3)).unwrap();
        drop(store);
        let (_, loaded) = open(tmp.path());
        assert_eq!(loaded.records, vec![rec(1), rec(2), rec(3)]);
    }

    #[test]
    fn bad_record_in_the_middle_is_corruption_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            for id in 1..=5 {
                store.append(&rec(id)).unwrap();
            }
        }
        let path = journal(tmp.path());
        let mut content = fs::read(&path).unwrap();
        let third = line_starts(&content)[2];
        content[third + 15] ^= 0x01;
        fs::write(&path, &content).unwrap();

        let err = open_err(tmp.path());
        assert_corrupt(err, &path, 3, third as u64, "checksum");
        assert_eq!(
            fs::read(&path).unwrap(),
            content,
            "open must not touch a corrupt journal"
        );
    }

    #[test]
    fn checksummed_but_undecodable_last_entry_is_corruption_not_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::<String>::open::<State>(tmp.path()).unwrap();
            store.append(&"not a Rec".to_string()).unwrap();
        }
        let path = journal(tmp.path());
        let before = fs::read(&path).unwrap();
        assert_corrupt(open_err(tmp.path()), &path, 1, 0, "records do not decode");
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn sequence_gap_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            for id in 1..=4 {
                store.append(&rec(id)).unwrap();
            }
        }
        let path = journal(tmp.path());
        let content = fs::read(&path).unwrap();
        let starts = line_starts(&content);
        // Drop entry 2 entirely: every line is intact, but seq 2 is missing.
        let mut gapped = content[..starts[1]].to_vec();
        gapped.extend_from_slice(&content[starts[2]..]);
        fs::write(&path, &gapped).unwrap();
        assert_corrupt(
            open_err(tmp.path()),
            &path,
            2,
            starts[1] as u64,
            "starts at seq 3, expected 2",
        );
    }

    #[test]
    fn journal_without_its_snapshot_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            store.append_batch(&[rec(1), rec(2), rec(3)]).unwrap();
            store.compact(&vec![rec(1), rec(2), rec(3)]).unwrap();
            store.append(&rec(4)).unwrap();
        }
        fs::remove_file(tmp.path().join(SNAPSHOT_FILE)).unwrap();
        assert_corrupt(
            open_err(tmp.path()),
            &journal(tmp.path()),
            1,
            0,
            "records are missing",
        );
    }

    #[test]
    fn corrupt_snapshot_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let state: State = (1..=3).map(rec).collect();
        {
            let (mut store, _) = open(tmp.path());
            store.append_batch(&state).unwrap();
            store.compact(&state).unwrap();
        }
        let path = tmp.path().join(SNAPSHOT_FILE);
        let good = fs::read(&path).unwrap();
        let state_start = good.iter().position(|&b| b == b'\n').unwrap() + 1;

        let mut flipped = good.clone();
        flipped[state_start + 10] ^= 0x20;
        fs::write(&path, &flipped).unwrap();
        assert_corrupt(
            open_err(tmp.path()),
            &path,
            2,
            state_start as u64,
            "checksum",
        );
        assert_eq!(fs::read(&path).unwrap(), flipped, "open must not touch it");

        fs::write(&path, &good[..good.len() - 7]).unwrap();
        assert_corrupt(
            open_err(tmp.path()),
            &path,
            2,
            state_start as u64,
            "announces",
        );

        let other_version = String::from_utf8(good.clone()).unwrap().replacen(
            r#""version":1"#,
            r#""version":2"#,
            1,
        );
        fs::write(&path, other_version).unwrap();
        assert_corrupt(open_err(tmp.path()), &path, 1, 0, "version 2");

        fs::write(&path, b"").unwrap();
        assert_corrupt(open_err(tmp.path()), &path, 1, 0, "no header line");

        fs::write(&path, &good).unwrap();
        let (_, loaded) = open(tmp.path());
        assert_eq!(loaded.snapshot, Some(state));
    }

    #[test]
    fn snapshot_written_but_journal_not_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let path = journal(tmp.path());
        let state: State = (1..=5).map(rec).collect();
        let old_journal;
        {
            let (mut store, _) = open(tmp.path());
            for r in &state {
                store.append(r).unwrap();
            }
            old_journal = fs::read(&path).unwrap();
            store.compact(&state).unwrap();
        }
        // Crash after the snapshot rename, before the journal truncation.
        fs::write(&path, &old_journal).unwrap();
        {
            let (mut store, loaded) = open(tmp.path());
            assert_eq!(loaded.snapshot.as_ref(), Some(&state));
            assert!(
                loaded.records.is_empty(),
                "records <= snapshot seq replayed twice"
            );
            assert_eq!(store.journal_len(), 0);
            assert_eq!(store.last_seq(), 5);
            // Open finished the truncation, so new entries do not follow stale ones.
            assert_eq!(fs::metadata(&path).unwrap().len(), 0);
            store.append(&rec(6)).unwrap();
            store.append(&rec(7)).unwrap();
        }
        // A journal that kept its stale prefix (truncation failed) and grew on.
        let newer = fs::read(&path).unwrap();
        let mut both = old_journal.clone();
        both.extend_from_slice(&newer);
        fs::write(&path, &both).unwrap();
        let (store, loaded) = open(tmp.path());
        assert_eq!(loaded.snapshot, Some(state));
        assert_eq!(loaded.records, vec![rec(6), rec(7)]);
        assert_eq!(store.journal_len(), 2);
        assert_eq!(store.last_seq(), 7);
        assert_eq!(fs::read(&path).unwrap(), both);
    }

    #[test]
    fn leftover_snapshot_tmp_is_ignored_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = open(tmp.path());
            store.append(&rec(1)).unwrap();
        }
        let leftover = tmp.path().join(SNAPSHOT_TMP_FILE);
        fs::write(&leftover, b"{\"format\":\"vxcd-st").unwrap();
        let (_, loaded) = open(tmp.path());
        assert!(loaded.snapshot.is_none());
        assert_eq!(loaded.records, vec![rec(1)]);
        assert!(!leftover.exists());
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, _) = open(tmp.path());
        let err = open_err(tmp.path());
        let shown = err.to_string();
        match err {
            StoreError::Locked { dir } => assert_eq!(dir, tmp.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(shown.contains(&tmp.path().display().to_string()), "{shown}");
        drop(first);
        open(tmp.path());
    }

    #[test]
    fn unencodable_record_writes_nothing() {
        use std::collections::HashMap;
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::<HashMap<Vec<u8>, u32>>::open::<State>(tmp.path()).unwrap();
        // JSON object keys must be strings: serialization fails before any write.
        let bad = HashMap::from([(vec![1u8], 1u32)]);
        let err = store.append(&bad).unwrap_err();
        assert!(matches!(err, StoreError::Encode { .. }), "{err:?}");
        assert!(err.to_string().contains(JOURNAL_FILE), "{err}");
        assert_eq!(fs::metadata(journal(tmp.path())).unwrap().len(), 0);
        assert_eq!(store.last_seq(), 0);
        store.append(&HashMap::new()).unwrap();
        assert_eq!(store.last_seq(), 1);
    }
}
