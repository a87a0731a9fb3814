//! A snapshot written off the request path: on any thread, to a temporary file, synced,
//! renamed, the directory synced; the store cuts its journal only once that is done.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

use super::files::{io_err, private_file, remove_if_present, sync_dir};
use super::format::encode_snapshot;
use super::StoreError;

/// A snapshot to be written off the request path (see [`Store::begin_compaction`]).
#[derive(Debug)]
pub struct Compaction {
    pub(super) seq: u64,
    pub(super) snapshot_path: PathBuf,
    pub(super) tmp_path: PathBuf,
    pub(super) dir: PathBuf,
}

impl Compaction {
    /// Writes `snapshot` (temporary file, fsync, rename, directory fsync). Blocking; touches
    /// only the snapshot files, so it may run on any thread while the store appends.
    pub fn write<S: Serialize>(&self, snapshot: &S) -> Result<(), StoreError> {
        let content = encode_snapshot(self.seq, snapshot).map_err(|source| StoreError::Encode {
            what: "snapshot",
            path: self.snapshot_path.clone(),
            source,
        })?;
        let write_tmp = || -> io::Result<()> {
            // A leftover (or planted) tmp file or symlink is unlinked, never followed.
            remove_if_present(&self.tmp_path)?;
            let mut tmp = private_file(OpenOptions::new().write(true).create_new(true))
                .open(&self.tmp_path)?;
            tmp.write_all(&content)?;
            tmp.sync_all()
        };
        let written = write_tmp()
            .map_err(io_err("writing snapshot", &self.tmp_path))
            .and_then(|()| {
                fs::rename(&self.tmp_path, &self.snapshot_path)
                    .map_err(io_err("renaming into", &self.snapshot_path))
            });
        if let Err(e) = written {
            // A partial snapshot would keep a full disk full; the journal still holds everything.
            let _ = remove_if_present(&self.tmp_path);
            return Err(e);
        }
        sync_dir(&self.dir)
    }
}
