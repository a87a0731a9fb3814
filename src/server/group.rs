//! Group commit on the server's side: writes that wait for the engine at the same time go to it
//! as one group (`engine/group.rs`: one durable write for all of them), whether they came
//! pipelined on one connection or from several.
//!
//! No task of its own: each connection puts its job in `pending` and then waits for either its
//! answers or the engine lock. Whoever gets the lock leads: it takes what is pending (its own job
//! and the ones that queued behind the request in flight), runs them as one group, and hands
//! each job its answers. A connection whose job another leader took finds its answers ready.
//! The lock is never held across anything but the group itself.

use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::oneshot;

use super::Control;
use crate::engine::{Engine, MAX_GROUP};
use crate::protocol::{Failure, Op};

/// One connection's writes, waiting for a leader.
pub(super) struct GroupJob {
    ops: Vec<Op>,
    /// Whether the peer is still there (checked once it is the job's turn: an answer nobody
    /// reads is not worth a change).
    alive: Box<dyn Fn() -> bool + Send>,
    answers: oneshot::Sender<Vec<Result<Value, Failure>>>,
}

/// The jobs waiting for a leader.
#[derive(Default)]
pub(super) struct Pending(Mutex<Vec<GroupJob>>);

impl Pending {
    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<GroupJob>> {
        // A poisoned queue only means a panic mid-push of a plain value: the queue is whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest jobs, as many as fit in one group (at least one).
    fn take_group(&self) -> Vec<GroupJob> {
        let mut jobs = self.jobs();
        let mut ops = 0;
        let mut count = 0;
        for job in jobs.iter() {
            if count > 0 && ops + job.ops.len() > MAX_GROUP {
                break;
            }
            ops += job.ops.len();
            count += 1;
        }
        jobs.drain(..count).collect()
    }
}

fn gone() -> Failure {
    Failure::new("gone", "the peer closed the connection")
}

impl Control {
    /// Applies `ops` (each `engine::groupable`, from a peer that may change state) with whatever
    /// other writes wait at the same time; one answer per op, in order.
    pub async fn answer_group(
        &self,
        ops: Vec<Op>,
        alive: impl Fn() -> bool + Send + 'static,
    ) -> Vec<Result<Value, Failure>> {
        let count = ops.len();
        let (answers, mut mine) = oneshot::channel();
        self.pending.jobs().push(GroupJob {
            ops,
            alive: Box::new(alive),
            answers,
        });
        loop {
            tokio::select! {
                biased;
                answers = &mut mine => {
                    return answers.unwrap_or_else(|_| vec![Err(Failure::internal("the group leader stopped")); count]);
                }
                mut engine = self.engine.lock() => {
                    lead(&self.pending, &mut engine).await;
                }
            }
        }
    }
}

/// Runs one group of what is pending, under the engine lock the caller holds.
async fn lead(pending: &Pending, engine: &mut Engine) {
    let mut jobs = pending.take_group();
    // A job whose peer has gone is answered so, and changes nothing.
    jobs.retain_mut(|job| {
        let here = !job.answers.is_closed() && (job.alive)();
        if !here {
            let answers = std::mem::replace(&mut job.answers, oneshot::channel().0);
            let _ = answers.send(vec![Err(gone()); job.ops.len()]);
        }
        here
    });
    if jobs.is_empty() {
        return;
    }
    let mut ops = Vec::with_capacity(jobs.iter().map(|j| j.ops.len()).sum());
    let mut sizes = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        sizes.push(job.ops.len());
        ops.extend(job.ops);
        replies.push(job.answers);
    }
    crate::metrics::daemon()
        .write_group_ops
        .observe(ops.len() as f64);
    let mut answers = engine.handle_group(ops).await.into_iter();
    for (size, reply) in sizes.into_iter().zip(replies) {
        // Nobody waiting for them is not an error: the change is made either way.
        let _ = reply.send(answers.by_ref().take(size).collect());
    }
}
