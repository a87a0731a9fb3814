//! One connection: requests read as budgeted lines, answered in order, `watch` streamed.

use std::sync::Arc;

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::protocol::{self, Failure, Op, Request};

use super::listen::{peer_connected, Slot, FREE_BUFFER, READ_CHUNK};
use super::{AnswerHold, Control, Peer};

pub(super) enum Next {
    Line(Vec<u8>),
    Closed,
    TooLarge,
    OverBudget,
}

/// Reads until one complete line is in `buf` and takes it out. Bytes after the newline stay in
/// `buf`: pipelined requests are answered one at a time, and nothing more is read from the
/// socket until then (backpressure). An idle connection holds no buffer at all: memory is
/// reserved only once the socket has bytes to read.
pub(super) async fn next_line(read: &mut UnixStream, buf: &mut Vec<u8>, slot: &mut Slot) -> Next {
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

pub(super) async fn connection(
    mut stream: UnixStream,
    peer: Peer,
    mut slot: Slot,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle = control.access().idle_timeout;
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
        if let Some(writes) = pipelined_writes(line, &mut buf, &mut slot, peer, &control) {
            if !answer_writes(&mut stream, writes, peer, fd, &control, idle).await {
                return;
            }
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

/// Longest line looked at for a group: a key or VXC put is far shorter; a longer line (a `sync`,
/// a `batch`) is answered alone, and parsed once.
const GROUP_LINE: usize = 64 * 1024;

/// A write a group may take (`engine::groupable`), parsed; `None` for anything else.
fn groupable_request(line: &[u8], peer: Peer, control: &Control) -> Option<Request> {
    if line.len() > GROUP_LINE || !control.may_change(peer) {
        return None;
    }
    protocol::parse_request(line)
        .ok()
        .filter(|request| crate::engine::groupable(&request.op))
}

/// `line` and the lines after it already read (pipelined), as long as each is a write a group
/// may take: they are applied as one group, with one durable write. `None`: `line` is not such
/// a write (it is answered alone). Nothing more is read from the socket for it: the group is what
/// the peer had sent when its first line was read.
fn pipelined_writes(
    line: &[u8],
    buf: &mut Vec<u8>,
    slot: &mut Slot,
    peer: Peer,
    control: &Control,
) -> Option<Vec<Request>> {
    let first = groupable_request(line, peer, control)?;
    let mut writes = vec![first];
    while writes.len() < crate::engine::MAX_GROUP {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            break;
        };
        let next = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
        let Some(request) = groupable_request(next, peer, control) else {
            break;
        };
        writes.push(request);
        buf.drain(..=end);
    }
    if buf.is_empty() {
        *buf = Vec::new();
        slot.cover(0);
    }
    Some(writes)
}

/// Answers pipelined writes, in order, once their group is in the kernel and on disk; false when
/// the peer has gone.
async fn answer_writes(
    stream: &mut UnixStream,
    writes: Vec<Request>,
    peer: Peer,
    fd: RawFd,
    control: &Control,
    idle: Duration,
) -> bool {
    if !peer_connected(fd) {
        return false;
    }
    let mut named = Vec::with_capacity(writes.len());
    let mut ops = Vec::with_capacity(writes.len());
    for request in writes {
        named.push((request.id, request.op.name(), request.op.object()));
        ops.push(request.op);
    }
    let answers = control.answer_group(ops, move || peer_connected(fd)).await;
    for ((id, op, object), answered) in named.into_iter().zip(answers) {
        crate::metrics::count_request(op, answered.as_ref().err().map_or("ok", |f| f.code));
        control.audit(peer, op, &object, answered.as_ref().err());
        let line = match answered {
            Ok(result) => protocol::success_line(&id, result),
            Err(failure) if failure.code == "gone" => return false,
            Err(failure) => protocol::failure_line(&id, &failure),
        };
        if !send(stream, line, idle).await {
            return false;
        }
    }
    true
}

pub(super) enum Responded {
    /// The answer line, and what it holds of the budget until it is written.
    Answer(String, AnswerHold),
    /// A `watch`: the connection becomes a stream of events.
    Watch(Request),
}

/// `watch`: one answer line (`{"watching": true, "last_seq": N}`), then one line per event,
/// until the peer closes, stops reading for `idle`, or the daemon stops. What the peer sends
/// meanwhile is read and ignored (a closed peer is noticed that way).
pub(super) async fn stream_events(
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

pub(super) async fn send_event(
    stream: &mut UnixStream,
    event: &crate::engine::Event,
    idle: Duration,
) -> bool {
    match serde_json::to_string(event) {
        Ok(line) => send(stream, line, idle).await,
        Err(_) => true,
    }
}

/// The answer to one request line; `None` when the peer has gone or the daemon stops.
pub(super) async fn respond(
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
                    None => {
                        control
                            .answer_line_while(request, peer, || peer_connected(fd))
                            .await
                    }
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
pub(super) async fn send(stream: &mut UnixStream, mut line: String, idle: Duration) -> bool {
    line.push('\n');
    matches!(
        tokio::time::timeout(idle, stream.write_all(line.as_bytes())).await,
        Ok(Ok(()))
    )
}
