//! The engine's seam towards the disk: where a transaction makes its records durable before it
//! answers. In the daemon it is the [`Store`]; the engine's unit tests wrap a real store in a
//! temporary directory with a switch that makes the next writes fail, as a full disk does.

use std::path::Path;

use super::Record;
use crate::store::{Compaction, Store, StoreError};

/// A durable, append-only log of the engine's records with off-path compaction.
pub trait Journal: Send + 'static {
    /// Appends the records as one entry; returns once they are on disk.
    fn append_batch(&mut self, records: &[Record]) -> Result<(), StoreError>;
    /// Why writes are refused or the last one failed (`None`: healthy).
    fn failure(&self) -> Option<&str>;
    /// Tries to make a failed journal healthy again.
    fn recover(&mut self) -> Result<(), StoreError>;
    /// The state directory, for `status`.
    fn dir(&self) -> &Path;
    /// The sequence number of the last entry written.
    fn last_seq(&self) -> u64;
    /// Records since the last snapshot.
    fn journal_len(&self) -> usize;
    /// Starts a snapshot of everything appended so far.
    fn begin_compaction(&mut self) -> Result<Compaction, StoreError>;
    /// Ends it: on success the journal keeps only what came after.
    fn finish_compaction(&mut self, written: Result<(), StoreError>) -> Result<(), StoreError>;
}

impl Journal for Store<Record> {
    fn append_batch(&mut self, records: &[Record]) -> Result<(), StoreError> {
        Store::append_batch(self, records)
    }
    fn failure(&self) -> Option<&str> {
        Store::failure(self)
    }
    fn recover(&mut self) -> Result<(), StoreError> {
        Store::recover(self)
    }
    fn dir(&self) -> &Path {
        Store::dir(self)
    }
    fn last_seq(&self) -> u64 {
        Store::last_seq(self)
    }
    fn journal_len(&self) -> usize {
        Store::journal_len(self)
    }
    fn begin_compaction(&mut self) -> Result<Compaction, StoreError> {
        Store::begin_compaction(self)
    }
    fn finish_compaction(&mut self, written: Result<(), StoreError>) -> Result<(), StoreError> {
        Store::finish_compaction(self, written)
    }
}
