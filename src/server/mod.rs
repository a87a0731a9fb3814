//! The control socket: accepts connections, reads one request per line, checks who may change
//! state (SO_PEERCRED), hands the operation to the engine and writes one answer per line, in order.
//! Rooms: `mod.rs` (the shared `Control`: authorization and dispatch to the engine or the
//! reader), `listen` (binding, the fd ceiling, admission against the limits), `connection`
//! (one connection's budgeted lines, ordered answers, `watch`).

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::config::Access;
use crate::engine::{Engine, Reader};
use crate::protocol::{self, Failure, Op, Request};

mod connection;
mod group;
mod listen;

use listen::RateLog;
pub use listen::{bind, raise_fd_limit, serve};

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
}

/// The shared state of the server: the engine behind one lock (changes are applied one at a time,
/// in arrival order), the read side that answers reads without that lock, and the access rules.
pub struct Control {
    pub engine: tokio::sync::Mutex<Engine>,
    pub reader: Reader,
    /// What `watch` streams.
    pub events: Arc<crate::engine::Events>,
    /// Who may change state and the connection limits; replaced by a config reload.
    access: std::sync::RwLock<Arc<Access>>,
    /// Readers' list answers computed at once (root and the writers do not wait for it): the
    /// work of a reader flood is bounded by the cores, not by the connections.
    heavy_reads: Semaphore,
    /// Bytes buffered across all connections (`control.buffer_budget_mib`), in two halves so
    /// that neither kind of holder starves the other: partial request lines beyond
    /// [`FREE_BUFFER`] each ...
    budget: Arc<Semaphore>,
    /// Rate bound of the audit lines of unauthorized attempts.
    refusals: Mutex<RateLog>,
    /// ... and readers' answers computed but not yet written beyond [`FREE_ANSWER`] each.
    answer_budget: Arc<Semaphore>,
    answer_budget_bytes: usize,
    /// Writes waiting to be led into the engine as one group (`group.rs`).
    pending: group::Pending,
}

/// Bytes of an answer any connection may hold without drawing on the budget (2,000 connections
/// holding this much each stay within 32 MiB).
const FREE_ANSWER: usize = 16 * 1024;

/// What a read answer holds of the answer budget until it is written.
pub struct AnswerHold {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Control {
    pub fn new(engine: Engine, access: Access) -> Self {
        let reader = engine.reader();
        let events = engine.events();
        let total = access.buffer_budget.min(Semaphore::MAX_PERMITS);
        let answer_budget_bytes = total - total / 2;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Control {
            engine: tokio::sync::Mutex::new(engine),
            reader,
            events,
            access: std::sync::RwLock::new(Arc::new(access)),
            heavy_reads: Semaphore::new(cores),
            budget: Arc::new(Semaphore::new(total / 2)),
            answer_budget: Arc::new(Semaphore::new(answer_budget_bytes)),
            answer_budget_bytes,
            refusals: Mutex::new(RateLog::new()),
            pending: group::Pending::default(),
        }
    }

    /// The access rules and limits in force.
    pub fn access(&self) -> Arc<Access> {
        match self.access.read() {
            Ok(access) => access.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the access rules and limits (a config reload). The socket's mode and group and
    /// the buffer budget stay as they were bound and sized at start.
    pub fn set_access(&self, access: Access) {
        let mut slot = match self.access.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(access);
    }

    /// The audit log: every change and every refused change, with who asked (journald fields
    /// `UID`, `OP`, `OBJECT`, `OUTCOME`). A reader's refused attempts are logged at a bounded
    /// rate: they are the one kind a local user can send without limit.
    pub(super) fn audit(&self, peer: Peer, op: &str, object: &str, failure: Option<&Failure>) {
        match failure {
            None => log::info!(
                uid = peer.uid, op = op, object = object, outcome = "ok";
                "uid {}: {op} {object}: ok", peer.uid
            ),
            Some(f) if f.code == "unauthorized" => {
                if let Ok(mut limit) = self.refusals.lock() {
                    if limit.allow() {
                        log::warn!(
                            uid = peer.uid, op = op, object = object, outcome = f.code;
                            "uid {}: {op} {object}: refused, unauthorized{}", peer.uid, limit.suppressed_note()
                        );
                    }
                }
            }
            Some(f) => log::warn!(
                uid = peer.uid, op = op, object = object, outcome = f.code;
                "uid {}: {op} {object}: refused, {}: {}", peer.uid, f.code, f.message
            ),
        }
    }

    pub(super) fn may_change(&self, peer: Peer) -> bool {
        peer.uid == 0 || self.access().writer_uids.contains(&peer.uid)
    }

    /// Answers one parsed request.
    pub async fn answer(&self, request: Request, peer: Peer) -> Result<serde_json::Value, Failure> {
        self.answer_while(request, peer, || true).await
    }

    /// Refuses a change or a probe from a peer that may not send one.
    fn authorize(&self, needs_writer: bool, peer: Peer) -> Result<(), Failure> {
        if needs_writer && !self.may_change(peer) {
            return Err(Failure::new(
                "unauthorized",
                format!(
                    "uid {} may not change state or send probes: only root and the configured \
                     writers may",
                    peer.uid
                ),
            ));
        }
        Ok(())
    }

    /// The whole answer line of one parsed request, as [`Control::answer_while`] answers it; a
    /// `batch` is written from its results as text ([`crate::engine::BatchAnswer`]), never as
    /// one `Value` tree.
    pub async fn answer_line_while(
        &self,
        request: Request,
        peer: Peer,
        alive: impl Fn() -> bool,
    ) -> Result<String, Failure> {
        let id = request.id.clone();
        let needs_writer = request.op.needs_writer();
        let Op::Batch { ops, atomic } = request.op else {
            return self
                .answer_while(request, peer, alive)
                .await
                .map(|result| protocol::success_line(&id, result));
        };
        self.authorize(needs_writer, peer)?;
        let mut engine = self.engine.lock().await;
        if !alive() {
            return Err(Failure::new("gone", "the peer closed the connection"));
        }
        let answer = engine.handle_batch(ops, atomic).await?;
        drop(engine);
        protocol::success_line_of(&id, &answer)
    }

    /// Answers one parsed request unless `alive` says, once it is its turn, that the peer has
    /// gone: an answer nobody reads is not worth computing.
    pub async fn answer_while(
        &self,
        request: Request,
        peer: Peer,
        alive: impl Fn() -> bool,
    ) -> Result<serde_json::Value, Failure> {
        let gone = || Failure::new("gone", "the peer closed the connection");
        self.authorize(request.op.needs_writer(), peer)?;
        match &request.op {
            Op::Verify { id } => {
                // Probing takes up to seconds: neither the engine nor other requests wait for it.
                let specs = self.reader.state().verify_specs(id.as_deref())?;
                return tokio::task::spawn_blocking(move || crate::engine::run_verify(specs))
                    .await
                    .map_err(|e| Failure::internal(format!("verify stopped: {e}")));
            }
            Op::PortList {} => {
                return Ok(serde_json::json!({"ports": self.reader.port_views().await}));
            }
            Op::VxcStats { id } => return self.reader.vxc_stats(id.as_deref()).await,
            op if crate::engine::is_read(op) => {
                if let Some(answer) = self.reader.state().answer(op) {
                    return answer;
                }
            }
            _ => {}
        }
        let mut engine = self.engine.lock().await;
        if !alive() {
            return Err(gone());
        }
        engine.handle(request.op).await
    }

    /// The whole answer line of `key.list` or `vxc.list` (`None` for any other op). O(state):
    /// computed on a blocking thread, so that the runtime's threads stay free for root's
    /// requests, at most one per core for readers, and serialized straight from the views.
    async fn list_line(
        &self,
        request: &Request,
        peer: Peer,
        alive: impl Fn() -> bool,
    ) -> Option<Result<String, Failure>> {
        let keys = match request.op {
            Op::KeyList {} => true,
            Op::VxcList {} => false,
            _ => return None,
        };
        let gone = || Failure::new("gone", "the peer closed the connection");
        let _turn = if self.may_change(peer) {
            None
        } else {
            match self.heavy_reads.acquire().await {
                Ok(turn) => Some(turn),
                Err(_) => return Some(Err(gone())),
            }
        };
        if !alive() {
            return Some(Err(gone()));
        }
        let state = self.reader.state();
        let id = request.id.clone();
        #[derive(serde::Serialize)]
        struct Keys {
            keys: Vec<protocol::KeyView>,
        }
        #[derive(serde::Serialize)]
        struct Vxcs {
            vxcs: Vec<protocol::VxcView>,
        }
        let line = tokio::task::spawn_blocking(move || {
            // The views are taken and the state let go before the (longer) encoding.
            if keys {
                let keys = state.key_views(time::OffsetDateTime::now_utc());
                drop(state);
                protocol::success_line_of(&id, &Keys { keys })
            } else {
                let vxcs = state.vxc_views();
                drop(state);
                protocol::success_line_of(&id, &Vxcs { vxcs })
            }
        })
        .await;
        Some(line.unwrap_or_else(|e| Err(Failure::internal(format!("read stopped: {e}")))))
    }

    /// Makes an answer of `len` bytes for `peer` count against the answer budget until the hold
    /// is dropped (after the write). Root's and the writers' answers, and small ones, are free.
    /// `None`: the budget cannot cover it now; the caller drops the answer, waits with
    /// [`Control::wait_for_answer_budget`] and computes it again (a read), so what waits is a
    /// request, not its answer.
    pub fn hold_answer(&self, peer: Peer, len: usize) -> Option<AnswerHold> {
        if self.may_change(peer) || len <= FREE_ANSWER {
            return Some(AnswerHold { _permit: None });
        }
        let n = u32::try_from(len.min(self.answer_budget_bytes)).ok()?;
        self.answer_budget
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(|p| AnswerHold { _permit: Some(p) })
    }

    /// Waits until the answer budget can cover `len` bytes, and holds them.
    pub async fn wait_for_answer_budget(&self, len: usize) -> Option<AnswerHold> {
        let n = u32::try_from(len.min(self.answer_budget_bytes)).ok()?;
        self.answer_budget
            .clone()
            .acquire_many_owned(n)
            .await
            .ok()
            .map(|p| AnswerHold { _permit: Some(p) })
    }
}
