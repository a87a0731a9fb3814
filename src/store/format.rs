//! The on-disk format: journal entries (sequence, count, records, CRC) and the snapshot's
//! header; encoding, and the scan that replays a journal and finds a torn tail.

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::files::{io_err, read_private};
use super::{
    StoreError, TornTail, PREVIEW_BYTES, SNAPSHOT_FORMAT, SNAPSHOT_VERSION,
    SNAPSHOT_VERSION_STATE_ONLY,
};

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotHeader {
    format: String,
    version: u32,
    seq: u64,
    len: u64,
    crc32: String,
}

pub(super) fn encode_entry<R: Serialize>(
    first_seq: u64,
    records: &[R],
) -> serde_json::Result<Vec<u8>> {
    let mut body = format!("{first_seq} {} ", records.len()).into_bytes();
    serde_json::to_writer(&mut body, records)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&body)).into_bytes();
    line.extend_from_slice(&body);
    line.push(b'\n');
    Ok(line)
}

pub(super) fn encode_snapshot<S: Serialize>(seq: u64, state: &S) -> serde_json::Result<Vec<u8>> {
    let state_json = serde_json::to_vec(state)?;
    let header = SnapshotHeader {
        format: SNAPSHOT_FORMAT.to_string(),
        version: SNAPSHOT_VERSION,
        seq,
        len: state_json.len() as u64,
        crc32: snapshot_crc(SNAPSHOT_VERSION, seq, &state_json),
    };
    let mut content = serde_json::to_vec(&header)?;
    content.push(b'\n');
    content.extend_from_slice(&state_json);
    content.push(b'\n');
    Ok(content)
}

/// The snapshot checksum: over the header's `seq` and `len` and the state (version 2), or over
/// the state alone (version 1).
pub(super) fn snapshot_crc(version: u32, seq: u64, state_json: &[u8]) -> String {
    let mut hasher = crc32fast::Hasher::new();
    if version != SNAPSHOT_VERSION_STATE_ONLY {
        hasher.update(format!("{seq} {} ", state_json.len()).as_bytes());
    }
    hasher.update(state_json);
    format!("{:08x}", hasher.finalize())
}

/// Reads `snapshot.json`: `(None, 0)` if absent, else the state and the last seq it holds.
pub(super) fn read_snapshot<S: DeserializeOwned>(
    path: &Path,
) -> Result<(Option<S>, u64), StoreError> {
    let content = match read_private(path) {
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
    let known = [SNAPSHOT_VERSION, SNAPSHOT_VERSION_STATE_ONLY];
    if header.format != SNAPSHOT_FORMAT || !known.contains(&header.version) {
        return Err(corrupt(
            1,
            0,
            format!(
                "format {:?} version {}; this vxcd reads only {SNAPSHOT_FORMAT:?} versions {SNAPSHOT_VERSION_STATE_ONLY} and {SNAPSHOT_VERSION}",
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
    let crc = snapshot_crc(header.version, header.seq, state_json);
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

pub(super) struct Replay<R> {
    /// Records newer than the snapshot, in order.
    pub(super) records: Vec<R>,
    /// Last sequence number in the journal's valid part (0 if it has no entry).
    pub(super) last_seq: u64,
    /// Length of the journal without its torn tail.
    pub(super) valid_bytes: u64,
    pub(super) torn_tail: Option<TornTail>,
}

/// Why one journal line is unusable.
pub(super) enum LineFault {
    /// Checksum, header or terminator wrong: what a torn write looks like.
    Damaged(String),
    /// Checksum holds, so the bytes are what was written, yet they do not make sense.
    Invalid(String),
}

pub(super) struct Entry<R> {
    first_seq: u64,
    records: Vec<R>,
}

pub(super) fn parse_line<R: DeserializeOwned>(line: &[u8]) -> Result<Entry<R>, LineFault> {
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

pub(super) fn scan_journal<R: DeserializeOwned>(
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
