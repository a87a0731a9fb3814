//! The operator's side of the control protocol: a small synchronous client, the request bodies
//! `vxcctl` builds from flags or files, and the tables it prints. The `vxcctl` binary only parses
//! the command line and maps each command to an [`Op`] and a renderer from here.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

pub use crate::cli::vxcctl_args::{parse_rfc3339, KeyPutArgs, VxcArgs};
use crate::protocol::Op;

mod render;
mod request;

pub use render::*;
pub use request::*;

/// Where vxcd listens unless `--socket` or `VXCD_SOCKET` say otherwise (config `[control] socket`).
pub const DEFAULT_SOCKET: &str = "/run/vxcd/control.sock";

/// The environment variable that overrides [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "VXCD_SOCKET";

/// How long a call waits for its answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest answer line accepted: a list of every key on a big edge host stays far below this.
pub const MAX_ANSWER: u64 = 256 << 20;

/// The daemon refused a request: its error code, message and the code's details.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteError {
    pub code: String,
    pub message: String,
    /// Every other field of the error object (`next_available`, `held_by`, ...).
    pub details: Map<String, Value>,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl RemoteError {
    /// The error object as the daemon sent it.
    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code.clone()));
        error.insert("message".into(), Value::from(self.message.clone()));
        for (k, v) in &self.details {
            error.insert(k.clone(), v.clone());
        }
        Value::Object(error)
    }
}

/// Why a call did not produce a result.
#[derive(Debug)]
pub enum ClientError {
    /// The daemon answered and refused.
    Remote(RemoteError),
    /// The socket could not be reached.
    Connect { path: PathBuf, source: io::Error },
    /// Sending or receiving failed.
    Io {
        path: PathBuf,
        op: String,
        source: io::Error,
    },
    /// No answer within the read timeout.
    Timeout {
        path: PathBuf,
        op: String,
        after: Duration,
    },
    /// The daemon closed the connection before a whole answer line arrived.
    Closed { path: PathBuf, op: String },
    /// The answer is not a protocol answer (or not the one expected).
    Protocol {
        path: PathBuf,
        op: String,
        detail: String,
    },
}

impl ClientError {
    /// `vxcctl`'s exit status: 1 when the daemon refused, 2 when it could not be asked.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Remote(_) => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint =
            format!("is vxcd running? pick another socket with --socket PATH or {SOCKET_ENV}");
        match self {
            ClientError::Remote(err) => write!(f, "{err}"),
            ClientError::Connect { path, source } => match source.kind() {
                io::ErrorKind::NotFound => write!(
                    f,
                    "cannot connect to vxcd at {}: no such socket ({hint})",
                    path.display()
                ),
                io::ErrorKind::ConnectionRefused => write!(
                    f,
                    "cannot connect to vxcd at {}: nothing listens there, the socket is stale ({hint})",
                    path.display()
                ),
                io::ErrorKind::PermissionDenied => write!(
                    f,
                    "cannot connect to vxcd at {}: permission denied (the socket's mode and group, \
                     [control] mode and group in vxcd.toml, decide who may connect)",
                    path.display()
                ),
                _ => write!(
                    f,
                    "cannot connect to vxcd at {}: {source} ({hint})",
                    path.display()
                ),
            },
            ClientError::Io { path, op, source } => {
                write!(f, "{op} to vxcd at {}: {source}", path.display())
            }
            ClientError::Timeout { path, op, after } => write!(
                f,
                "no answer from vxcd at {} to {op} within {} s (a change may still be applied: \
                 check with a read command; --timeout waits longer)",
                path.display(),
                after.as_secs_f64()
            ),
            ClientError::Closed { path, op } => write!(
                f,
                "vxcd at {} closed the connection without answering {op}",
                path.display()
            ),
            ClientError::Protocol { path, op, detail } => write!(
                f,
                "unexpected answer from vxcd at {} to {op}: {detail}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// One connection to vxcd; calls are answered in order, one at a time.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
    next_id: u64,
}

impl Client {
    /// Connects with [`DEFAULT_TIMEOUT`] for each answer.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects; each call then waits at most `timeout` for its answer (and for sending).
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let connect_err = |source| ClientError::Connect {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(&path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            path,
            next_id: 1,
        })
    }

    /// Sends a typed operation; see [`Client::call`].
    pub fn call_op(&mut self, op: &Op) -> Result<Value, ClientError> {
        let request = serde_json::to_value(op).map_err(|e| ClientError::Protocol {
            path: self.path.clone(),
            op: "request".into(),
            detail: format!("cannot encode the request: {e}"),
        })?;
        self.call(&request)
    }

    /// Sends one operation (a JSON object with `op` and its arguments) and returns the answer's
    /// `result`. The request gets a fresh numeric `id` unless its arguments already use the field
    /// `id` (`vxc.get`, `vxc.delete`): then the argument is sent as is and the answer may echo it.
    pub fn call(&mut self, op: &Value) -> Result<Value, ClientError> {
        let op_name = op
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("request")
            .to_owned();
        let Value::Object(fields) = op else {
            return Err(self.protocol(&op_name, "a request must be a JSON object".into()));
        };
        let mut request = fields.clone();
        let expected_id = match request.get("id") {
            Some(argument) => argument.clone(),
            None => {
                let id = Value::from(self.next_id);
                self.next_id += 1;
                request.insert("id".into(), id.clone());
                id
            }
        };
        let mut line = Value::Object(request).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|source| self.io_error(&op_name, source))?;

        let answer = self.read_answer(&op_name)?;
        let echoed = answer.get("id").unwrap_or(&Value::Null);
        // A daemon that could not read the request id answers with null.
        if echoed != &expected_id && !echoed.is_null() {
            return Err(self.protocol(
                &op_name,
                format!("answer id {echoed} does not match request id {expected_id}"),
            ));
        }
        match answer.get("ok") {
            Some(Value::Bool(true)) => answer
                .get("result")
                .cloned()
                .ok_or_else(|| self.protocol(&op_name, "ok answer without result".into())),
            Some(Value::Bool(false)) => {
                Err(ClientError::Remote(self.remote_error(&op_name, &answer)?))
            }
            _ => Err(self.protocol(&op_name, "answer without boolean ok".into())),
        }
    }

    fn read_answer(&mut self, op_name: &str) -> Result<Value, ClientError> {
        let mut line = Vec::new();
        let read = self
            .reader
            .by_ref()
            .take(MAX_ANSWER)
            .read_until(b'\n', &mut line);
        match read {
            Ok(_) if line.ends_with(b"\n") => {}
            Ok(n) if n as u64 >= MAX_ANSWER => {
                return Err(self.protocol(
                    op_name,
                    format!("answer line longer than {MAX_ANSWER} bytes"),
                ))
            }
            Ok(_) => {
                return Err(ClientError::Closed {
                    path: self.path.clone(),
                    op: op_name.to_owned(),
                })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let after = self
                    .reader
                    .get_ref()
                    .read_timeout()
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                return Err(ClientError::Timeout {
                    path: self.path.clone(),
                    op: op_name.to_owned(),
                    after,
                });
            }
            Err(source) => return Err(self.io_error(op_name, source)),
        }
        serde_json::from_slice(&line)
            .map_err(|e| self.protocol(op_name, format!("answer is not JSON: {e}")))
    }

    fn remote_error(&self, op_name: &str, answer: &Value) -> Result<RemoteError, ClientError> {
        let Some(Value::Object(error)) = answer.get("error") else {
            return Err(self.protocol(op_name, "failure answer without error object".into()));
        };
        let mut details = error.clone();
        let code = details.remove("code");
        let message = details.remove("message");
        match (code, message) {
            (Some(Value::String(code)), Some(Value::String(message))) => Ok(RemoteError {
                code,
                message,
                details,
            }),
            _ => Err(self.protocol(
                op_name,
                "error object without string code and message".into(),
            )),
        }
    }

    fn protocol(&self, op_name: &str, detail: String) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            op: op_name.to_owned(),
            detail,
        }
    }

    fn io_error(&self, op_name: &str, source: io::Error) -> ClientError {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return ClientError::Timeout {
                path: self.path.clone(),
                op: op_name.to_owned(),
                after: self
                    .writer
                    .write_timeout()
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            };
        }
        ClientError::Io {
            path: self.path.clone(),
            op: op_name.to_owned(),
            source,
        }
    }
}

/// The socket to use: the flag, else `VXCD_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os(SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

// ---------------------------------------------------------------------------------------------
// Request bodies from flags or files.

#[cfg(test)]
mod tests;
