//! Compaction of the journal into a snapshot, off the request path: started after a commit
//! once the journal is long enough, written on a blocking thread, finished at a later request.

use super::{Engine, Journal, Kernel, Snapshot};
use crate::store::StoreError;

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Finishes a compaction whose snapshot is written, and starts one when the journal is long
    /// enough. The snapshot is encoded and synced on a blocking thread from the published state
    /// (which is exactly what the store holds: every record appended is committed by now), so
    /// no request waits for it (8,000 keys: 177 ms in a debug build, in the request path).
    pub(super) async fn compaction_step(&mut self) {
        if self
            .compaction
            .as_ref()
            .is_some_and(|job| job.is_finished())
        {
            self.finish_compaction().await;
        }
        if self.compaction.is_some() || self.store.journal_len() < self.compact_every {
            return;
        }
        let job = match self.store.begin_compaction() {
            Ok(job) => job,
            Err(e) => {
                log::warn!("state compaction not started, journal kept: {e}");
                return;
            }
        };
        let state = self.published.load();
        self.compaction = Some(tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot {
                keys: state.model.keys().cloned().collect(),
                vxcs: state.model.vxcs().cloned().collect(),
                generation: state.generation,
            };
            // Let the state go before the long part: the engine copies it while it is held.
            drop(state);
            job.write(&snapshot)
        }));
    }

    /// Waits for the running compaction, if any, and ends it (at shutdown, and when it is done).
    pub async fn finish_compaction(&mut self) {
        let Some(job) = self.compaction.take() else {
            return;
        };
        let written = job.await.unwrap_or_else(|e| {
            Err(StoreError::Io {
                action: "writing the snapshot",
                path: self.store.dir().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        if let Err(e) = self.store.finish_compaction(written) {
            log::warn!("state compaction failed, journal kept: {e}");
        }
        self.publish_store();
    }
}
