//! Keeps the kernel equal to the state while the daemon runs: a full check every
//! `reconcile.interval_s`, and sooner when the kernel reports a link or tc change (a subinterface or
//! shaper removed by hand, a port interface appearing or going away). Bursts of events are coalesced
//! into one pass, so a storm of changes costs one O(state) pass per burst, not one per event; a
//! burst of vxcd's own changes costs none: tc events are told apart by the netlink port id that
//! caused them (`dataplane/own.rs`), link events by what they say (`dataplane/drift.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::dataplane::{KernelEvent, KernelObject};
use crate::server::Control;

/// How long to wait for more events before running the pass they triggered.
const SETTLE: Duration = Duration::from_millis(200);

/// The longest a burst is coalesced before it is judged.
const MAX_BURST: Duration = Duration::from_millis(500);

fn is_lost(event: Option<&KernelEvent>) -> bool {
    event.is_some_and(|e| e.object == KernelObject::EventsLost)
}

/// `interval` is `reconcile.interval_s`; a config reload sends it again (changed or not), which
/// also runs a pass at once, so VXCs on a port the reload added come up without waiting.
pub async fn run(
    control: Arc<Control>,
    mut interval: watch::Receiver<Duration>,
    mut events: mpsc::Receiver<KernelEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events_open = true;
    let mut ticker = tokio::time::interval(*interval.borrow_and_update());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; startup already converged
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = interval.changed() => {
                if changed.is_err() {
                    return;
                }
                ticker = tokio::time::interval(*interval.borrow_and_update());
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
            }
            event = events.recv(), if events_open => {
                let Some(first) = event else {
                    log::warn!("kernel event stream ended; relying on the periodic check");
                    events_open = false;
                    continue;
                };
                // Coalesce the burst this event belongs to: until the kernel is quiet for SETTLE,
                // and at most MAX_BURST, so that drift made during a long burst of vxcd's own
                // changes is still seen within a second.
                let began = tokio::time::Instant::now();
                let mut burst = vec![first];
                loop {
                    let left = MAX_BURST.saturating_sub(began.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    match tokio::time::timeout(SETTLE.min(left), events.recv()).await {
                        Ok(Some(e)) => burst.push(e),
                        Ok(None) => { events_open = false; break; }
                        Err(_) => break,
                    }
                }
                if burst.iter().any(|e| is_lost(Some(e))) {
                    // Logged once per burst: the pass below is a full one, which is the resync.
                    log::warn!("the kernel dropped events (event socket overflow); full resync");
                } else if let Some(e) = burst
                    .iter()
                    .find(|e| e.object != KernelObject::Link && !e.caused_by_vxcd)
                {
                    log::debug!("tc change not of vxcd's making: {e:?}");
                } else {
                    burst.retain(|e| e.object == KernelObject::Link);
                    // Asked under the engine lock: every transaction that raised these is done.
                    let (kernel, desired) = {
                        let engine = control.engine.lock().await;
                        (engine.kernel(), engine.desired())
                    };
                    match kernel.link_drift(&burst, &desired).await {
                        None => {
                            // Only vxcd's own changes (and the echoes of its reads): nothing drifted.
                            crate::metrics::daemon().own_event_bursts.inc();
                            continue;
                        }
                        Some(why) => log::info!("kernel change not of vxcd's making: {why}; reconciling"),
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
        // The engine lock is taken to begin and to publish, not across the whole-host read:
        // requests are answered while the pass reads (`engine/pass_steps.rs`). Drift that the
        // transactions made meanwhile explain is checked again, RECHECKS times at most; the last
        // check repairs whatever it finds.
        for check in 0..=RECHECKS {
            let pass = control.engine.lock().await.begin_pass();
            let found = pass.check().await;
            let again = control
                .engine
                .lock()
                .await
                .finish_pass(found, check < RECHECKS)
                .await;
            if !again {
                break;
            }
        }
    }
}

/// How many times a pass whose drift transactions explained is checked again before one repairs.
const RECHECKS: usize = 2;
