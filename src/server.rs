//! The control socket: accepts connections, reads one request per line, checks who may change
//! state (SO_PEERCRED), hands the operation to the engine and writes one answer per line, in order.

use std::path::Path;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::codec::{
    AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead, FramedWrite, LinesCodec,
};

use crate::config::Access;
use crate::engine::Engine;
use crate::protocol::{self, Failure, Op, Request};

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
}

/// The shared state of the server: the engine behind one lock (requests are applied one at a time,
/// in arrival order) and the access rules.
pub struct Control {
    pub engine: tokio::sync::Mutex<Engine>,
    pub access: Access,
}

impl Control {
    fn may_change(&self, peer: Peer) -> bool {
        peer.uid == 0 || self.access.writer_uids.contains(&peer.uid)
    }

    /// Answers one parsed request.
    pub async fn answer(&self, request: Request, peer: Peer) -> Result<serde_json::Value, Failure> {
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
        if let Op::Verify { id } = &request.op {
            // Probing takes up to seconds: take what to probe under the lock, probe without it.
            let specs = self.engine.lock().await.verify_specs(id.as_deref())?;
            return tokio::task::spawn_blocking(move || crate::engine::run_verify(specs))
                .await
                .map_err(|e| Failure::internal(format!("verify stopped: {e}")));
        }
        self.engine.lock().await.handle(request.op).await
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

/// Accepts connections until `shutdown` turns true. Connections already open finish the request
/// they are in; the caller then takes the engine lock, which waits for any request in flight.
pub async fn serve(
    listener: UnixListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let control = control.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move { connection(stream, control, shutdown).await });
                }
                Err(e) => log::warn!("control socket: accept failed: {e}"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    stream: UnixStream,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer { uid: cred.uid() },
        Err(e) => {
            log::warn!("control socket: cannot read peer credentials: {e}");
            return;
        }
    };
    let (read, write) = stream.into_split();
    // Raw byte lines: UTF-8 and JSON are checked by the parser, which answers bad_request.
    let mut lines = FramedRead::new(
        read,
        AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), protocol::MAX_LINE),
    );
    let mut out = FramedWrite::new(write, LinesCodec::new());
    loop {
        let next = tokio::select! {
            next = lines.next() => next,
            _ = shutdown.changed() => return,
        };
        let line = match next {
            None => return,
            Some(Ok(line)) => line,
            Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                let answer =
                    protocol::failure_line(&serde_json::Value::Null, &Failure::too_large());
                let _ = out.send(answer).await;
                return;
            }
            Some(Err(AnyDelimiterCodecError::Io(e))) => {
                log::debug!("control socket: read error: {e}");
                return;
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = match protocol::parse_request(line) {
            Err((id, failure)) => protocol::failure_line(&id, &failure),
            Ok(request) => {
                let id = request.id.clone();
                match control.answer(request, peer).await {
                    Ok(result) => protocol::success_line(&id, result),
                    Err(failure) => protocol::failure_line(&id, &failure),
                }
            }
        };
        if out.send(answer).await.is_err() {
            return;
        }
    }
}
