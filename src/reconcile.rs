//! Keeps the kernel equal to the state while the daemon runs: a full check every
//! `reconcile.interval_s`, and sooner when the kernel reports a link or tc change (a subinterface or
//! shaper removed by hand, a port interface appearing or going away). Bursts of events are coalesced
//! into one pass, so a storm of changes costs one O(state) pass per burst, not one per event; a
//! burst of vxcd's own tc events only (`dataplane/own.rs`) costs none.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::dataplane::{KernelEvent, KernelObject};
use crate::server::Control;

/// How long to wait for more events before running the pass they triggered.
const SETTLE: Duration = Duration::from_millis(200);

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
                if event.is_none() {
                    log::warn!("kernel event stream ended; relying on the periodic check");
                    events_open = false;
                    continue;
                }
                // Coalesce the burst this event belongs to.
                let mut lost = is_lost(event.as_ref());
                let mut foreign = event.as_ref().is_some_and(|e| !e.caused_by_vxcd);
                if let Some(e) = event.as_ref().filter(|e| !e.caused_by_vxcd) {
                    log::debug!("kernel event not of vxcd's making: {e:?}");
                }
                loop {
                    match tokio::time::timeout(SETTLE, events.recv()).await {
                        Ok(Some(e)) => {
                            lost |= is_lost(Some(&e));
                            if !e.caused_by_vxcd && !foreign {
                                log::debug!("kernel event not of vxcd's making: {e:?}");
                            }
                            foreign |= !e.caused_by_vxcd;
                        }
                        Ok(None) => { events_open = false; break; }
                        Err(_) => break,
                    }
                }
                if lost {
                    // Logged once per burst: the pass below is a full one, which is the resync.
                    log::warn!("the kernel dropped events (event socket overflow); full resync");
                } else if !foreign {
                    // Only vxcd's own changes (and the echoes of its reads): nothing drifted.
                    crate::metrics::daemon().own_event_bursts.inc();
                    continue;
                }
            }
            _ = shutdown.changed() => return,
        }
        control.engine.lock().await.reconcile().await;
    }
}
