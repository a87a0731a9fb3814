//! The capture workers, one thread per port, and the `Inspector` that starts, feeds and reads
//! them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::classify::*;
use super::expect::*;
use super::ring::{self, Direction, RingConfig};
use super::view::*;
use super::{InspectConfig, InspectError};

/// What a capture thread shares with the inspector.
pub(super) struct PortShared {
    pub(super) counters: PortCounters,
    pub(super) generation: AtomicU64,
    pub(super) table: Mutex<Arc<PortTable>>,
    pub(super) stop: AtomicBool,
}

pub(super) struct PortWorker {
    pub(super) port: String,
    pub(super) shared: Arc<PortShared>,
    pub(super) thread: Option<JoinHandle<()>>,
    /// Counters of the ends as last published, for the snapshot.
    pub(super) ends: Vec<EndSlot>,
    pub(super) error: Option<String>,
}

pub(super) struct State {
    pub(super) workers: HashMap<String, PortWorker>,
    /// Interfaces that failed to open: (port, error).
    pub(super) failed: HashMap<String, (String, String)>,
}

/// The passive inspector; see the module documentation.
pub struct Inspector {
    cfg: InspectConfig,
    state: Mutex<State>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn ts_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(super) fn rfc3339(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(super) fn capture_loop(mut ring: ring::Ring, shared: Arc<PortShared>) {
    let mut generation = u64::MAX;
    let mut table: Arc<PortTable> = Arc::clone(&lock(&shared.table));
    let mut blocks: u32 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let ready = match ring.wait(100) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("inspector: capture on {} stopped: {e}", ring.ifname());
                return;
            }
        };
        // Checked after the wait: a frame captured after `update` returned is classified
        // with the new table.
        let now_generation = shared.generation.load(Ordering::Acquire);
        if now_generation != generation {
            table = Arc::clone(&lock(&shared.table));
            generation = now_generation;
        }
        if !ready {
            if ring.interface_gone() {
                log::warn!(
                    "inspector: {} was deleted: its capture stops, and starts again when it is back",
                    ring.ifname()
                );
                return;
            }
            if let Ok(stats) = ring.stats() {
                shared
                    .counters
                    .kernel_drops
                    .fetch_add(u64::from(stats.drops), Ordering::Relaxed);
            }
            continue;
        }
        let result = ring.next_block(0, |raw| {
            let ts = if raw.ts_ns == 0 {
                ts_now_ns()
            } else {
                raw.ts_ns
            };
            classify(&table, &shared.counters, &raw, ts);
        });
        match result {
            Ok(n) => {
                blocks = blocks.wrapping_add(1);
                // Drop counters cost a syscall: read them when idle and every 64 blocks.
                if n > 0 && blocks % 64 == 0 {
                    if let Ok(stats) = ring.stats() {
                        shared
                            .counters
                            .kernel_drops
                            .fetch_add(u64::from(stats.drops), Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                log::error!("inspector: capture on {} stopped: {e}", ring.ifname());
                return;
            }
        }
    }
}

impl Inspector {
    /// Starts a capture on every port of `expectation` (filtered by `cfg.ports`). A port whose
    /// interface cannot be opened is reported in its [`PortView::error`] and retried by
    /// [`Inspector::update`]; only an invalid configuration is an error.
    pub fn start(cfg: InspectConfig, expectation: Expectation) -> Result<Inspector, InspectError> {
        if cfg.snap_len < 64 {
            return Err(InspectError::SnapLen(cfg.snap_len));
        }
        let inspector = Inspector {
            cfg,
            state: Mutex::new(State {
                workers: HashMap::new(),
                failed: HashMap::new(),
            }),
        };
        inspector.update(expectation);
        Ok(inspector)
    }

    pub(super) fn ring_config(&self) -> RingConfig {
        let block_size = 1u32 << 20;
        RingConfig {
            snap_len: self.cfg.snap_len,
            block_size,
            block_count: (self.cfg.ring_bytes / block_size).max(2),
            block_timeout_ms: 20,
        }
    }

    /// Publishes a new expectation: tables are swapped for running captures (counters of
    /// ends that stay are kept), captures start on new ports and stop on ports that left.
    /// Capture sockets are opened in the calling thread's network namespace.
    pub fn update(&self, expectation: Expectation) {
        let mut state = lock(&self.state);
        let wanted: Vec<&PortExpect> = expectation
            .ports
            .iter()
            .filter(|p| self.inspects(p))
            .collect();
        let keep: std::collections::HashSet<&str> =
            wanted.iter().map(|p| p.interface.as_str()).collect();
        let gone: Vec<String> = state
            .workers
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for interface in gone {
            if let Some(worker) = state.workers.remove(&interface) {
                stop_worker(worker);
            }
        }
        state.failed.retain(|k, _| keep.contains(k.as_str()));
        for port in wanted {
            self.install(&mut state, port);
        }
    }

    /// Publishes the expectation of some ports only, leaving the others as they are: what a
    /// VXC change needs (its two ports), at a cost bounded by the ends of those ports rather
    /// than by every VXC on the host.
    pub fn update_ports(&self, ports: &[PortExpect]) {
        let mut state = lock(&self.state);
        for port in ports.iter().filter(|p| self.inspects(p)) {
            self.install(&mut state, port);
        }
    }

    pub(super) fn inspects(&self, port: &PortExpect) -> bool {
        self.cfg.ports.is_empty() || self.cfg.ports.contains(&port.port)
    }

    /// Swaps in a port's table (counters of ends that stay are kept), or starts its capture.
    pub(super) fn install(&self, state: &mut State, port: &PortExpect) {
        let old_ends = state
            .workers
            .get(&port.interface)
            .map(|w| w.ends.clone())
            .unwrap_or_default();
        let (table, ends) = build_table(port, &old_ends);
        if let Some(worker) = state.workers.get_mut(&port.interface) {
            *lock(&worker.shared.table) = Arc::new(table);
            worker.shared.generation.fetch_add(1, Ordering::Release);
            worker.ends = ends;
            worker.port = port.port.clone();
            if worker.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                return;
            }
            // Its capture ended (the interface was deleted): a new socket on the
            // interface of that name, same counters.
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
            match ring::Ring::open(&port.interface, self.ring_config()) {
                Ok(ring) => {
                    log::info!("inspector: {} is back: capturing again", port.interface);
                    (worker.thread, worker.error) =
                        spawn_capture(&port.interface, ring, &worker.shared);
                }
                Err(e) => worker.error = Some(format!("capture ended; reopening it: {e}")),
            }
            return;
        }
        let ring = match ring::Ring::open(&port.interface, self.ring_config()) {
            Ok(ring) => ring,
            Err(e) => {
                log::warn!("inspector: port {} ({}): {e}", port.port, port.interface);
                state
                    .failed
                    .insert(port.interface.clone(), (port.port.clone(), e.to_string()));
                return;
            }
        };
        state.failed.remove(&port.interface);
        let shared = Arc::new(PortShared {
            counters: PortCounters::new(&port.interface),
            generation: AtomicU64::new(0),
            table: Mutex::new(Arc::new(table)),
            stop: AtomicBool::new(false),
        });
        let (thread, error) = spawn_capture(&port.interface, ring, &shared);
        state.workers.insert(
            port.interface.clone(),
            PortWorker {
                port: port.port.clone(),
                shared,
                thread,
                ends,
                error,
            },
        );
    }

    /// Current counters and violations of every port (sorted by port name).
    pub fn snapshot(&self) -> InspectView {
        let state = lock(&self.state);
        let mut ports: Vec<PortView> = state
            .workers
            .iter()
            .map(|(interface, w)| port_view(interface, w))
            .collect();
        ports.extend(
            state
                .failed
                .iter()
                .map(|(interface, (port, error))| PortView {
                    port: port.clone(),
                    interface: interface.clone(),
                    capturing: false,
                    error: Some(error.clone()),
                    ends: Vec::new(),
                    violations: Vec::new(),
                    probes_rx: 0,
                    probes_tx: 0,
                    host_frames: 0,
                    unparsed: 0,
                    kernel_drops: 0,
                }),
        );
        ports.sort_by(|a, b| a.port.cmp(&b.port).then(a.interface.cmp(&b.interface)));
        InspectView { ports }
    }

    /// Stops every capture thread and waits for them.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        for (_, worker) in state.workers.drain() {
            stop_worker(worker);
        }
    }
}

/// Starts the capture thread of one port: (its handle, or why it could not start).
pub(super) fn spawn_capture(
    interface: &str,
    ring: ring::Ring,
    shared: &Arc<PortShared>,
) -> (Option<JoinHandle<()>>, Option<String>) {
    let thread_shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(format!("inspect-{interface}"))
        .spawn(move || capture_loop(ring, thread_shared));
    match thread {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("starting the capture thread: {e}"))),
    }
}

pub(super) fn stop_worker(mut worker: PortWorker) {
    worker.shared.stop.store(true, Ordering::Relaxed);
    if let Some(t) = worker.thread.take() {
        // The thread wakes from poll within 100 ms and sees the flag.
        let _ = t.join();
    }
}

pub(super) fn port_view(interface: &str, w: &PortWorker) -> PortView {
    let c = &w.shared.counters;
    let ends = w
        .ends
        .iter()
        .map(|(end, vlan, n)| EndView {
            vxc: end.vxc.clone(),
            side: end.side.as_str().to_string(),
            vlan: *vlan,
            rx_frames: n.rx_frames.load(Ordering::Relaxed),
            rx_bytes: n.rx_bytes.load(Ordering::Relaxed),
            tx_frames: n.tx_frames.load(Ordering::Relaxed),
            tx_bytes: n.tx_bytes.load(Ordering::Relaxed),
            probes_rx: n.probes[0].load(Ordering::Relaxed),
            probes_tx: n.probes[1].load(Ordering::Relaxed),
        })
        .collect();
    let mut violations = Vec::new();
    for (i, cell) in c.violations.iter().enumerate() {
        let count = cell.count.load(Ordering::Relaxed);
        if count == 0 {
            continue;
        }
        let Some(kind) = ViolationKind::from_code(cell.kind.load(Ordering::Relaxed)) else {
            continue;
        };
        let slot = i % SLOTS;
        let tpid = cell.tpid.load(Ordering::Relaxed);
        let inner = cell.inner.load(Ordering::Relaxed);
        violations.push(ViolationView {
            kind,
            vlan: (slot != UNTAGGED_SLOT).then_some(slot as u16),
            tpid: (tpid != 0).then_some(tpid),
            inner_vlan: (inner != 0).then_some((inner & 0x0fff) as u16),
            direction: if i < SLOTS {
                Direction::Rx
            } else {
                Direction::Tx
            },
            count,
            last_seen: rfc3339(cell.last_seen_ns.load(Ordering::Relaxed)),
        });
    }
    let alive = w.thread.as_ref().is_some_and(|t| !t.is_finished());
    PortView {
        port: w.port.clone(),
        interface: interface.to_string(),
        capturing: alive,
        error: w
            .error
            .clone()
            .or_else(|| (!alive).then(|| "capture thread ended (see the log)".to_string())),
        ends,
        violations,
        probes_rx: c.probes[0].load(Ordering::Relaxed),
        probes_tx: c.probes[1].load(Ordering::Relaxed),
        unparsed: c.unparsed.load(Ordering::Relaxed),
        kernel_drops: c.kernel_drops.load(Ordering::Relaxed),
        host_frames: c.host_frames.load(Ordering::Relaxed),
    }
}
