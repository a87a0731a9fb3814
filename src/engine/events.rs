//! Events for `watch`: what happened to the state and the kernel, numbered, kept in a bounded
//! ring for replay (`since`) and sent live to every watcher.
//!
//! The ring holds the last [`RING_SIZE`] events of this run of the daemon; `seq` starts at 1 at
//! each start. A watcher asking `since` a seq the ring no longer holds (or one from another run:
//! beyond the last seq) is told so with a `gap` event before what the ring does hold: it must
//! then read the state again (`vxc.list`) rather than trust the events to be complete.
//!
//! Emitting and subscribing take the same lock, so a watcher's replay and its live stream
//! neither overlap nor miss an event. A watcher that reads too slowly to keep up with the live
//! stream (more than [`RING_SIZE`] events behind) gets a `gap` too, never unbounded buffering.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use super::read::rfc3339;

/// Events kept for replay, and the most a live watcher may fall behind.
pub const RING_SIZE: usize = 4096;

/// One event as sent: `{"seq": N, "time": "...", "event": "<kind>", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A service key was stored (created or changed).
    KeyStored {
        key: String,
    },
    /// A single-use key was redeemed: it can build no other VXC.
    KeyUsed {
        key: String,
        vxc: String,
    },
    VxcCreated {
        vxc: String,
    },
    /// A VXC was changed in place; `changed` names the fields.
    VxcUpdated {
        vxc: String,
        changed: Vec<String>,
    },
    VxcDeleted {
        vxc: String,
    },
    /// A VXC's state changed (`new` for a VXC seen for the first time).
    VxcState {
        vxc: String,
        old: String,
        new: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The reconciler repaired drift: what it changed (`vxc` absent for an orphan removed).
    DriftRepaired {
        #[serde(skip_serializing_if = "Option::is_none")]
        vxc: Option<String>,
        what: Vec<String>,
    },
    /// A full-state `sync` of this generation is in the kernel and on disk.
    GenerationApplied {
        generation: u64,
    },
    /// Events were lost to this watcher (the ring moved on, or `since` is from another run).
    Gap {
        missed_after: u64,
    },
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Arc<Event>>,
}

pub struct Events {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
}

/// What a new watcher starts from: the replay it asked for, then the live stream.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The last seq emitted when the watch began.
    pub last_seq: u64,
}

impl Default for Events {
    fn default() -> Self {
        let (live, _) = broadcast::channel(RING_SIZE);
        Events {
            ring: Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(64),
            }),
            live,
        }
    }
}

impl Events {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn emit(&self, kind: EventKind) {
        let mut ring = self.ring();
        let event = Arc::new(Event {
            seq: ring.next_seq,
            time: rfc3339(OffsetDateTime::now_utc()),
            kind,
        });
        ring.next_seq += 1;
        if ring.events.len() == RING_SIZE {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // No watcher is not an error.
        let _ = self.live.send(event);
    }

    /// Starts a watch: with `since`, the events after it (a `gap` first when the ring does not
    /// reach back that far, or `since` is beyond the last seq); without, only what comes next.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.ring();
        let last_seq = ring.next_seq - 1;
        let mut replay = Vec::new();
        if let Some(since) = since {
            let oldest = ring.events.front().map_or(ring.next_seq, |e| e.seq);
            if since > last_seq || since + 1 < oldest {
                replay.push(Arc::new(Event {
                    seq: last_seq,
                    time: rfc3339(OffsetDateTime::now_utc()),
                    kind: EventKind::Gap {
                        missed_after: since.min(last_seq),
                    },
                }));
            }
            replay.extend(ring.events.iter().filter(|e| e.seq > since).cloned());
            if since > last_seq {
                replay.truncate(1);
            }
        }
        Subscription {
            replay,
            live: self.live.subscribe(),
            last_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(n: usize) -> EventKind {
        EventKind::VxcDeleted {
            vxc: format!("v-{n}"),
        }
    }

    #[test]
    fn replay_since_gives_what_came_after_and_then_the_live_stream() {
        let events = Events::default();
        for n in 1..=3 {
            events.emit(deleted(n));
        }
        let mut sub = events.subscribe(Some(1));
        assert_eq!(sub.last_seq, 3);
        let seqs: Vec<u64> = sub.replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        events.emit(deleted(4));
        let live = sub.live.try_recv().expect("live event");
        assert_eq!((live.seq, &live.kind), (4, &deleted(4)));
        let json = serde_json::to_value(&*live).expect("encode");
        assert_eq!(json["event"], "vxc_deleted");
        assert_eq!(json["vxc"], "v-4");
        assert_eq!(json["seq"], 4);
    }

    #[test]
    fn since_before_the_ring_or_beyond_the_last_seq_is_a_gap() {
        let events = Events::default();
        for n in 0..RING_SIZE + 10 {
            events.emit(deleted(n));
        }
        let sub = events.subscribe(Some(3));
        assert!(matches!(
            sub.replay[0].kind,
            EventKind::Gap { missed_after: 3 }
        ));
        assert_eq!(sub.replay.len(), RING_SIZE + 1);
        assert_eq!(sub.replay[1].seq, 11);
        let from_another_run = events.subscribe(Some(1_000_000));
        assert_eq!(from_another_run.replay.len(), 1);
        assert!(matches!(
            from_another_run.replay[0].kind,
            EventKind::Gap { .. }
        ));
        let fresh = events.subscribe(None);
        assert!(fresh.replay.is_empty());
        // The last seq itself: nothing missed, nothing to replay.
        let caught_up = events.subscribe(Some(fresh.last_seq));
        assert!(caught_up.replay.is_empty());
    }
}
