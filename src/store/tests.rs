//! The store's unit tests: appends, replay, torn and corrupt journals, compaction, full disks.

use super::*;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;

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
        header.starts_with(r#"{"format":"vxcd-state","version":2,"seq":10,"#),
        "{header}"
    );
}

#[test]
fn appends_during_a_background_compaction_are_kept_and_the_journal_shrinks() {
    let tmp = tempfile::tempdir().unwrap();
    let state: State = (1..=10).map(rec).collect();
    {
        let (mut store, _) = open(tmp.path());
        store.append_batch(&state).unwrap();
        let job = store.begin_compaction().unwrap();
        // Appends go on while the snapshot (of records 1..=10 only) is written.
        store.append(&rec(11)).unwrap();
        store.append_batch(&[rec(12), rec(13)]).unwrap();
        let written = job.write(&state);
        store.append(&rec(14)).unwrap();
        store.finish_compaction(written).unwrap();
        assert_eq!(store.journal_len(), 4);
        store.append(&rec(15)).unwrap();
    }
    let (store, loaded) = open(tmp.path());
    assert_eq!(loaded.snapshot, Some(state));
    assert_eq!(loaded.records, (11..=15).map(rec).collect::<Vec<_>>());
    assert_eq!(store.last_seq(), 15);
    let journal_text = fs::read_to_string(journal(tmp.path())).unwrap();
    assert_eq!(journal_text.lines().count(), 4, "{journal_text}");
    assert!(!tmp.path().join(JOURNAL_TMP_FILE).exists());
}

#[test]
fn a_crash_before_a_background_compaction_finishes_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state: State = (1..=5).map(rec).collect();
    {
        let (mut store, _) = open(tmp.path());
        store.append_batch(&state).unwrap();
        let job = store.begin_compaction().unwrap();
        store.append(&rec(6)).unwrap();
        job.write(&state).unwrap();
        // Gone before finish_compaction: the snapshot is in place, the journal is whole,
        // and a journal.log.tmp of an interrupted swap is left behind.
        fs::write(tmp.path().join(JOURNAL_TMP_FILE), b"half").unwrap();
    }
    let (store, loaded) = open(tmp.path());
    assert_eq!(loaded.snapshot, Some(state));
    assert_eq!(loaded.records, vec![rec(6)]);
    assert_eq!(store.last_seq(), 6);
    assert!(!tmp.path().join(JOURNAL_TMP_FILE).exists());
}

#[test]
fn a_failed_background_compaction_keeps_the_journal_and_refuses_until_room() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = open(tmp.path());
    store.append_batch(&[rec(1), rec(2)]).unwrap();
    let job = store.begin_compaction().unwrap();
    store.append(&rec(3)).unwrap();
    let failed = Err(StoreError::Io {
        action: "writing snapshot",
        path: tmp.path().join(SNAPSHOT_TMP_FILE),
        source: io::Error::from_raw_os_error(libc::ENOSPC),
    });
    drop(job);
    assert!(store.finish_compaction(failed).is_err());
    assert!(store.failure().is_some());
    assert_eq!(store.journal_len(), 3);
    // The disk has room (a tempdir): the next write repairs and succeeds.
    store.append(&rec(4)).unwrap();
    drop(store);
    let (_, loaded) = open(tmp.path());
    assert_eq!(loaded.snapshot, None);
    assert_eq!(loaded.records, (1..=4).map(rec).collect::<Vec<_>>());
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

    let other_version =
        String::from_utf8(good.clone())
            .unwrap()
            .replacen(r#""version":2"#, r#""version":3"#, 1);
    fs::write(&path, other_version).unwrap();
    assert_corrupt(open_err(tmp.path()), &path, 1, 0, "version 3");

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

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // SAFETY: umask only swaps the process's file-creation mask; no memory is involved.
    let old = unsafe { libc::umask(0o022) };
    let result = std::panic::catch_unwind(|| {
        let (mut store, _) = open(&dir);
        store.append(&rec(1)).unwrap();
        store.compact(&vec![rec(1)]).unwrap();
        store.append(&rec(2)).unwrap();
    });
    // SAFETY: as above, restores the mask.
    unsafe { libc::umask(old) };
    result.unwrap();
    assert_eq!(mode_of(&dir), 0o700);
    for file in [JOURNAL_FILE, SNAPSHOT_FILE, LOCK_FILE] {
        assert_eq!(mode_of(&dir.join(file)), 0o600, "{file}");
    }
}

#[test]
fn files_an_older_daemon_left_world_readable_are_narrowed() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = open(tmp.path());
        store.append(&rec(1)).unwrap();
        store.compact(&vec![rec(1)]).unwrap();
    }
    for file in [JOURNAL_FILE, SNAPSHOT_FILE, LOCK_FILE] {
        fs::set_permissions(tmp.path().join(file), fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (_store, loaded) = open(tmp.path());
    assert_eq!(loaded.snapshot, Some(vec![rec(1)]));
    assert_eq!(mode_of(tmp.path()), 0o700);
    for file in [JOURNAL_FILE, SNAPSHOT_FILE, LOCK_FILE] {
        assert_eq!(mode_of(&tmp.path().join(file)), 0o600, "{file}");
    }
}

#[test]
fn a_symlinked_journal_is_refused_and_its_target_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    drop(open(&dir));
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    fs::remove_file(journal(&dir)).unwrap();
    std::os::unix::fs::symlink(&victim, journal(&dir)).unwrap();
    let err = open_err(&dir);
    assert!(
        matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
        "{err}"
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
}

#[test]
fn a_planted_tmp_symlink_is_replaced_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let (mut store, _) = open(&dir);
    store.append(&rec(1)).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join(SNAPSHOT_TMP_FILE)).unwrap();
    store.compact(&vec![rec(1)]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert!(fs::symlink_metadata(dir.join(SNAPSHOT_TMP_FILE)).is_err());
    drop(store);
    assert_eq!(open(&dir).1.snapshot, Some(vec![rec(1)]));
}

#[test]
fn unsafe_state_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A symlink to a good directory.
    let real = tmp.path().join("real");
    drop(open(&real));
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = open_err(&link);
    assert!(err.to_string().contains("is a symlink"), "{err}");
    // Writable by others.
    let open_dir = tmp.path().join("open");
    fs::create_dir(&open_dir).unwrap();
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let err = open_err(&open_dir);
    assert!(err.to_string().contains("lets other users write"), "{err}");
    assert!(
        fs::read_dir(&open_dir).unwrap().next().is_none(),
        "nothing created in it"
    );
    // Owned by another user: as root, a directory given to nobody; otherwise one of root's.
    let foreign = if nix::unistd::geteuid().is_root() {
        let foreign = tmp.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        foreign
    } else {
        PathBuf::from("/usr")
    };
    let err = open_err(&foreign);
    assert!(err.to_string().contains("not by the daemon's uid"), "{err}");
}

#[test]
fn a_failed_compaction_removes_its_tmp_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let (mut store, _) = open(&dir);
    store.append(&rec(1)).unwrap();
    store.append(&rec(2)).unwrap();
    // A directory where the snapshot goes makes the rename fail after the tmp was written.
    fs::create_dir(dir.join(SNAPSHOT_FILE)).unwrap();
    assert!(store.compact(&vec![rec(1), rec(2)]).is_err());
    assert!(
        fs::symlink_metadata(dir.join(SNAPSHOT_TMP_FILE)).is_err(),
        "tmp left behind"
    );
    // The store goes on, and compacts once the obstacle is gone.
    store.append(&rec(3)).unwrap();
    fs::remove_dir(dir.join(SNAPSHOT_FILE)).unwrap();
    store.compact(&vec![rec(1), rec(2), rec(3)]).unwrap();
    store.append(&rec(4)).unwrap();
    drop(store);
    let (_, loaded) = open(&dir);
    assert_eq!(loaded.snapshot, Some(vec![rec(1), rec(2), rec(3)]));
    assert_eq!(loaded.records, vec![rec(4)]);
}

#[test]
fn a_poisoned_store_recovers_once_the_repair_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = open(tmp.path());
    store.append(&rec(1)).unwrap();
    // What a failed fdatasync leaves: the journal's length unknown, writes refused.
    store.poisoned = Some("fdatasync failed: EIO".into());
    let _ = store.journal.write_all(b"half an entry");
    assert_eq!(store.failure(), Some("fdatasync failed: EIO"));
    store.recover().unwrap();
    assert_eq!(store.failure(), None);
    store.append(&rec(2)).unwrap();
    drop(store);
    assert_eq!(open(tmp.path()).1.records, vec![rec(1), rec(2)]);
}

#[test]
fn a_flipped_snapshot_seq_is_refused_not_a_silent_skip() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = open(tmp.path());
        for i in 1..=8 {
            store.append(&rec(i)).unwrap();
        }
        store
            .compact(&(1..=8).map(rec).collect::<Vec<_>>())
            .unwrap();
        store.append(&rec(9)).unwrap();
    }
    let path = tmp.path().join(SNAPSHOT_FILE);
    let good = fs::read_to_string(&path).unwrap();
    // "seq":8 -> "seq":9 (one bit): replay would skip the acknowledged record 9.
    let flipped = good.replacen(r#""seq":8"#, r#""seq":9"#, 1);
    assert_ne!(flipped, good);
    fs::write(&path, &flipped).unwrap();
    assert_corrupt(
        open_err(tmp.path()),
        &path,
        2,
        (good.find('\n').unwrap() + 1) as u64,
        "checksum",
    );
    fs::write(&path, &good).unwrap();
    assert_eq!(open(tmp.path()).1.records, vec![rec(9)]);
}

#[test]
fn a_version_1_snapshot_is_still_read_and_rewritten_as_version_2() {
    let tmp = tempfile::tempdir().unwrap();
    let state = vec![rec(1), rec(2)];
    let state_json = serde_json::to_vec(&state).unwrap();
    let header = format!(
        r#"{{"format":"vxcd-state","version":1,"seq":2,"len":{},"crc32":"{:08x}"}}"#,
        state_json.len(),
        crc32fast::hash(&state_json)
    );
    let mut content = header.into_bytes();
    content.push(b'\n');
    content.extend_from_slice(&state_json);
    content.push(b'\n');
    fs::write(tmp.path().join(SNAPSHOT_FILE), &content).unwrap();
    let (mut store, loaded) = open(tmp.path());
    assert_eq!(loaded.snapshot, Some(state.clone()));
    assert_eq!(store.last_seq(), 2);
    store.compact(&state).unwrap();
    let rewritten = fs::read_to_string(tmp.path().join(SNAPSHOT_FILE)).unwrap();
    assert!(
        rewritten.starts_with(r#"{"format":"vxcd-state","version":2,"#),
        "{rewritten}"
    );
}
