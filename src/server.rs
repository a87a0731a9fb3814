//! The control socket: accepts connections, reads one request per line, checks who may change
//! state (SO_PEERCRED), hands the operation to the engine and writes one answer per line, in order.

use std::path::Path;
use std::sync::Arc;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use crate::config::Access;
use crate::engine::{Engine, Reader};
use crate::protocol::{self, Failure, Op, Request};

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
    pub access: Access,
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
            access,
            heavy_reads: Semaphore::new(cores),
            budget: Arc::new(Semaphore::new(total / 2)),
            answer_budget: Arc::new(Semaphore::new(answer_budget_bytes)),
            answer_budget_bytes,
            refusals: Mutex::new(RateLog::new()),
        }
    }

    /// The audit log: every change and every refused change, with who asked (journald fields
    /// `UID`, `OP`, `OBJECT`, `OUTCOME`). A reader's refused attempts are logged at a bounded
    /// rate: they are the one kind a local user can send without limit.
    fn audit(&self, peer: Peer, op: &str, object: &str, failure: Option<&Failure>) {
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

    fn may_change(&self, peer: Peer) -> bool {
        peer.uid == 0 || self.access.writer_uids.contains(&peer.uid)
    }

    /// Answers one parsed request.
    pub async fn answer(&self, request: Request, peer: Peer) -> Result<serde_json::Value, Failure> {
        self.answer_while(request, peer, || true).await
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
        if request.op.needs_writer() && !self.may_change(peer) {
            return Err(Failure::new(
                "unauthorized",
                format!(
                    "uid {} may not change state or send probes: only root and the configured \
                     writers may",
                    peer.uid
                ),
            ));
        }
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

/// Raises the soft limit of open files to the hard one: every connection is an fd, and the
/// default soft limit (1024) is what a reader flood reaches first. Logged either way.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "open-file limit: getrlimit failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        log::info!("open-file limit: {} (already the hard limit)", lim.rlim_cur);
        return;
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit read from the kernel, soft raised to its own hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log::warn!(
            "open-file limit: raising {old} to {}: {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
    } else {
        log::info!("open-file limit raised from {old} to {}", lim.rlim_max);
    }
}

/// Creates the socket file with the configured mode and group. A stale socket left by a crash is
/// replaced; a live one (another vxcd) is refused.
pub fn bind(path: &Path, access: &Access) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating socket directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is in use by a running daemon; refusing to take it over",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
        .map_err(|e| format!("setting mode {:o} on {}: {e}", access.mode, path.display()))?;
    if let Some(gid) = access.gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("setting group {gid} on {}: {e}", path.display()))?;
    }
    Ok(listener)
}

/// Connections root and the writers may hold beyond `max_connections`, so that a flood of
/// readers never locks out the users who change state.
const PRIVILEGED_RESERVE: usize = 64;
/// Bytes of a partial line a connection may buffer without drawing on the shared budget.
const FREE_BUFFER: usize = 4096;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 8192;
/// At most one log line per this period for each kind of repeated event.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Logs a repeated event at most once per `LOG_PERIOD`, with how many were left out.
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    fn new() -> Self {
        RateLog {
            last: None,
            suppressed: 0,
        }
    }

    /// True when a line may be logged now; otherwise counts it as suppressed.
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_PERIOD)
        {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        true
    }

    /// " (N more like it ... not logged)" for the line `allow` let through, and resets the count.
    fn suppressed_note(&mut self) -> String {
        let n = std::mem::take(&mut self.suppressed);
        if n == 0 {
            String::new()
        } else {
            format!(
                " ({n} more like it in the last {} s not logged)",
                LOG_PERIOD.as_secs()
            )
        }
    }

    fn warn(&mut self, message: std::fmt::Arguments) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_PERIOD)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!(
                "{message} ({} more like it in the last {} s not logged)",
                self.suppressed,
                LOG_PERIOD.as_secs()
            );
        } else {
            log::warn!("{message}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Open connections: readers in total and per uid, and the privileged (root, writers) apart.
#[derive(Default)]
struct Counts {
    readers: usize,
    privileged: usize,
    per_uid: HashMap<u32, usize>,
}

/// What a connection holds of the limits; given back when it is dropped.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
    privileged: bool,
    budget: Arc<Semaphore>,
    /// Bytes of the shared buffer budget this connection holds.
    held: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            if self.privileged {
                counts.privileged -= 1;
            } else {
                counts.readers -= 1;
                if let Some(n) = counts.per_uid.get_mut(&self.uid) {
                    *n -= 1;
                    if *n == 0 {
                        counts.per_uid.remove(&self.uid);
                    }
                }
            }
        }
        self.budget.add_permits(self.held);
    }
}

impl Slot {
    /// Makes the budget held match a buffer of `capacity` bytes; false when the shared budget
    /// cannot cover it.
    fn cover(&mut self, capacity: usize) -> bool {
        let need = capacity.saturating_sub(FREE_BUFFER);
        if need > self.held {
            let more = need - self.held;
            let Ok(more32) = u32::try_from(more) else {
                return false;
            };
            match self.budget.try_acquire_many(more32) {
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
            self.held = need;
        } else if need < self.held {
            self.budget.add_permits(self.held - need);
            self.held = need;
        }
        true
    }
}

/// Takes a slot for `peer`, or says which limit refuses it.
fn admit(
    counts: &Arc<Mutex<Counts>>,
    budget: &Arc<Semaphore>,
    control: &Control,
    peer: Peer,
) -> Result<Slot, String> {
    let access = &control.access;
    let privileged = control.may_change(peer);
    let mut c = counts
        .lock()
        .map_err(|_| "connection counts unavailable".to_owned())?;
    if privileged {
        if c.privileged >= PRIVILEGED_RESERVE {
            return Err(format!(
                "{PRIVILEGED_RESERVE} connections of root and the writers are open (the reserve)"
            ));
        }
        c.privileged += 1;
    } else {
        if c.readers >= access.max_connections {
            return Err(format!(
                "{} connections are open (control.max_connections)",
                access.max_connections
            ));
        }
        let mine = c.per_uid.get(&peer.uid).copied().unwrap_or(0);
        if mine >= access.max_connections_per_uid {
            return Err(format!(
                "uid {} has {mine} connections open (control.max_connections_per_uid)",
                peer.uid
            ));
        }
        c.readers += 1;
        *c.per_uid.entry(peer.uid).or_insert(0) += 1;
    }
    Ok(Slot {
        counts: counts.clone(),
        uid: peer.uid,
        privileged,
        budget: budget.clone(),
        held: 0,
    })
}

/// Accepts connections until `shutdown` turns true. Connections already open finish the request
/// they are in; the caller then takes the engine lock, which waits for any request in flight.
pub async fn serve(
    listener: UnixListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let budget = control.budget.clone();
    let mut accept_log = RateLog::new();
    let mut refusal_log = RateLog::new();
    let mut backoff = Duration::ZERO;
    loop {
        if !backoff.is_zero() {
            // Out of fds (EMFILE) or memory: accepting again at once would only fail again and
            // spin; wait for connections to close.
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                accept_log.warn(format_args!(
                    "control socket: accept failed: {e}; retrying in {} ms",
                    backoff.as_millis()
                ));
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer { uid: cred.uid() },
            Err(e) => {
                refusal_log.warn(format_args!(
                    "control socket: cannot read peer credentials: {e}"
                ));
                continue;
            }
        };
        match admit(&counts, &budget, &control, peer) {
            Ok(slot) => {
                let control = control.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(
                    async move { connection(stream, peer, slot, control, shutdown).await },
                );
            }
            Err(why) => {
                refusal_log.warn(format_args!(
                    "control socket: refused a connection of uid {}: {why}",
                    peer.uid
                ));
                let mut line = protocol::failure_line(
                    &serde_json::Value::Null,
                    &Failure::new("busy", format!("connection refused: {why}")),
                );
                line.push('\n');
                // One short line fits the empty socket buffer; never wait for a peer that does
                // not read. The stream is closed when dropped here.
                let _ = stream.try_write(line.as_bytes());
            }
        }
    }
}

/// True while the peer still has its end open (POLLHUP: it closed both directions; a peer that
/// only shut down its writing side still reads answers).
fn peer_connected(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call, count 1, timeout 0 (no wait);
    // `fd` is owned by the connection's stream, alive while this runs.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    !(n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0)
}

enum Next {
    Line(Vec<u8>),
    Closed,
    TooLarge,
    OverBudget,
}

/// Reads until one complete line is in `buf` and takes it out. Bytes after the newline stay in
/// `buf`: pipelined requests are answered one at a time, and nothing more is read from the
/// socket until then (backpressure). An idle connection holds no buffer at all: memory is
/// reserved only once the socket has bytes to read.
async fn next_line(read: &mut UnixStream, buf: &mut Vec<u8>, slot: &mut Slot) -> Next {
    let mut scanned = 0;
    loop {
        if let Some(pos) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + pos;
            if end > protocol::MAX_LINE {
                return Next::TooLarge;
            }
            let line = buf[..end].to_vec();
            buf.drain(..=end);
            if buf.is_empty() {
                *buf = Vec::new();
                slot.cover(0);
            } else if buf.capacity() > FREE_BUFFER {
                buf.shrink_to(FREE_BUFFER.max(buf.len()));
                slot.cover(buf.capacity());
            }
            return Next::Line(line);
        }
        scanned = buf.len();
        if buf.len() > protocol::MAX_LINE {
            return Next::TooLarge;
        }
        if read.readable().await.is_err() {
            return Next::Closed;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
            if !slot.cover(buf.capacity()) {
                return Next::OverBudget;
            }
        }
        match read.read_buf(buf).await {
            Ok(0) | Err(_) => return Next::Closed,
            Ok(_) => {}
        }
    }
}

async fn connection(
    mut stream: UnixStream,
    peer: Peer,
    mut slot: Slot,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle = control.access.idle_timeout;
    let fd = stream.as_raw_fd();
    let mut buf = Vec::new();
    loop {
        // The timeout covers the whole wait for a complete line: a partial line is idle.
        let next = tokio::select! {
            next = tokio::time::timeout(idle, next_line(&mut stream, &mut buf, &mut slot)) => next,
            _ = shutdown.changed() => return,
        };
        let line = match next {
            Err(_) => {
                log::debug!(
                    "control socket: uid {}: no complete request in {} s, closing",
                    peer.uid,
                    idle.as_secs()
                );
                return;
            }
            Ok(Next::Closed) => return,
            Ok(Next::Line(line)) => line,
            Ok(Next::TooLarge) => {
                let answer =
                    protocol::failure_line(&serde_json::Value::Null, &Failure::too_large());
                let _ = send(&mut stream, answer, idle).await;
                return;
            }
            Ok(Next::OverBudget) => {
                let answer = protocol::failure_line(
                    &serde_json::Value::Null,
                    &Failure::new(
                        "busy",
                        "the daemon's budget for partial requests (control.buffer_budget_mib) \
                         is used up; send shorter requests or retry",
                    ),
                );
                let _ = send(&mut stream, answer, idle).await;
                return;
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match respond(line, peer, fd, &control, &mut shutdown).await {
            None => return,
            Some(Responded::Watch(request)) => {
                return stream_events(stream, request, &control, shutdown, idle).await;
            }
            Some(Responded::Answer(answer, _hold)) => {
                if !send(&mut stream, answer, idle).await {
                    return;
                }
            }
        }
    }
}

enum Responded {
    /// The answer line, and what it holds of the budget until it is written.
    Answer(String, AnswerHold),
    /// A `watch`: the connection becomes a stream of events.
    Watch(Request),
}

/// `watch`: one answer line (`{"watching": true, "last_seq": N}`), then one line per event,
/// until the peer closes, stops reading for `idle`, or the daemon stops. What the peer sends
/// meanwhile is read and ignored (a closed peer is noticed that way).
async fn stream_events(
    mut stream: UnixStream,
    request: Request,
    control: &Control,
    mut shutdown: watch::Receiver<bool>,
    idle: Duration,
) {
    let Op::Watch { since } = request.op else {
        return;
    };
    let sub = control.events.subscribe(since);
    let mut live = sub.live;
    let answer = protocol::success_line(
        &request.id,
        serde_json::json!({"watching": true, "last_seq": sub.last_seq}),
    );
    if !send(&mut stream, answer, idle).await {
        return;
    }
    let mut last = sub.last_seq;
    for event in sub.replay {
        last = last.max(event.seq);
        if !send_event(&mut stream, &event, idle).await {
            return;
        }
    }
    let (mut read, mut write) = stream.into_split();
    let mut sink = [0u8; 512];
    loop {
        let event = tokio::select! {
            event = live.recv() => event,
            n = read.read(&mut sink) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let event = match event {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Too slow for the live stream: say so, and go on from what comes next.
                std::sync::Arc::new(crate::engine::Event {
                    seq: last,
                    time: crate::engine::rfc3339(time::OffsetDateTime::now_utc()),
                    kind: crate::engine::EventKind::Gap { missed_after: last },
                })
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        last = last.max(event.seq);
        let mut line = match serde_json::to_string(&*event) {
            Ok(line) => line,
            Err(_) => continue,
        };
        line.push('\n');
        match tokio::time::timeout(idle, write.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

async fn send_event(stream: &mut UnixStream, event: &crate::engine::Event, idle: Duration) -> bool {
    match serde_json::to_string(event) {
        Ok(line) => send(stream, line, idle).await,
        Err(_) => true,
    }
}

/// The answer to one request line; `None` when the peer has gone or the daemon stops.
async fn respond(
    line: &[u8],
    peer: Peer,
    fd: RawFd,
    control: &Control,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Responded> {
    let mut reserved = None;
    loop {
        let answer = match protocol::parse_request(line) {
            Err((id, failure)) => protocol::failure_line(&id, &failure),
            Ok(request) if matches!(request.op, Op::Watch { .. }) => {
                return Some(Responded::Watch(request));
            }
            Ok(request) => {
                if !peer_connected(fd) {
                    return None;
                }
                let id = request.id.clone();
                let op_name = request.op.name();
                let audited = request
                    .op
                    .needs_writer()
                    .then(|| (request.op.name(), request.op.object()));
                let answered = match control
                    .list_line(&request, peer, || peer_connected(fd))
                    .await
                {
                    Some(line) => line,
                    None => control
                        .answer_while(request, peer, || peer_connected(fd))
                        .await
                        .map(|result| protocol::success_line(&id, result)),
                };
                crate::metrics::count_request(
                    op_name,
                    answered.as_ref().err().map_or("ok", |f| f.code),
                );
                if let Some((op, object)) = audited {
                    control.audit(peer, op, &object, answered.as_ref().err());
                }
                match answered {
                    Ok(line) => line,
                    Err(failure) if failure.code == "gone" => return None,
                    Err(failure) => protocol::failure_line(&id, &failure),
                }
            }
        };
        if let Some(hold) = reserved.take() {
            return Some(Responded::Answer(answer, hold));
        }
        if let Some(hold) = control.hold_answer(peer, answer.len()) {
            return Some(Responded::Answer(answer, hold));
        }
        // Unread answers of other readers fill the budget: drop this one rather than hold it,
        // wait until its size fits, then answer again (only reads are this large, so answering
        // again changes nothing). The bytes held are bounded; the wait is the reader's.
        let len = answer.len();
        drop(answer);
        reserved = tokio::select! {
            hold = control.wait_for_answer_budget(len) => Some(hold?),
            _ = shutdown.changed() => return None,
        };
    }
}

/// Writes one answer line; false when the peer is gone or has not read for `idle`.
async fn send(stream: &mut UnixStream, mut line: String, idle: Duration) -> bool {
    line.push('\n');
    matches!(
        tokio::time::timeout(idle, stream.write_all(line.as_bytes())).await,
        Ok(Ok(()))
    )
}
