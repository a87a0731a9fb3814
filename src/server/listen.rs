//! The listening side: the socket bound with its mode, the fd ceiling raised, each connection
//! admitted against the limits (with a reserve for writers) or refused with a rate-bounded log.

use std::path::Path;
use std::sync::Arc;

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Access;
use crate::protocol::{self, Failure};

use super::connection::connection;
use super::{Control, Peer};

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
pub(super) const PRIVILEGED_RESERVE: usize = 64;
/// Bytes of a partial line a connection may buffer without drawing on the shared budget.
pub(super) const FREE_BUFFER: usize = 4096;
/// Bytes read from a socket at a time.
pub(super) const READ_CHUNK: usize = 8192;
/// At most one log line per this period for each kind of repeated event.
pub(super) const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Logs a repeated event at most once per `LOG_PERIOD`, with how many were left out.
pub(super) struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    pub(super) fn new() -> Self {
        RateLog {
            last: None,
            suppressed: 0,
        }
    }

    /// True when a line may be logged now; otherwise counts it as suppressed.
    pub(super) fn allow(&mut self) -> bool {
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
    pub(super) fn suppressed_note(&mut self) -> String {
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
pub(super) struct Counts {
    readers: usize,
    privileged: usize,
    per_uid: HashMap<u32, usize>,
}

/// What a connection holds of the limits; given back when it is dropped.
pub(super) struct Slot {
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
    pub(super) fn cover(&mut self, capacity: usize) -> bool {
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
pub(super) fn admit(
    counts: &Arc<Mutex<Counts>>,
    budget: &Arc<Semaphore>,
    control: &Control,
    peer: Peer,
) -> Result<Slot, String> {
    let access = control.access();
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
pub(super) fn peer_connected(fd: RawFd) -> bool {
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
