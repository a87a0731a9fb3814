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
mod tests {
    use super::*;
    use crate::domain::{KeyRequest, VxcRequest};
    use crate::protocol::EndView;
    use serde_json::json;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::thread;

    /// A server that reads one request per entry of `answers`, reports it, and answers with the
    /// entry: `Some(line)` (the request's id is substituted for `$ID`) or `None` (stay silent).
    fn fake_server(
        answers: Vec<Option<String>>,
    ) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<Value>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for answer in answers {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let request: Value = serde_json::from_str(&line).unwrap();
                let id = request.get("id").cloned().unwrap_or(Value::Null);
                tx.send(request).unwrap();
                match answer {
                    Some(a) => {
                        let a = a.replace("$ID", &id.to_string());
                        writer.write_all(format!("{a}\n").as_bytes()).unwrap();
                    }
                    None => {
                        // Hold the connection open without answering until the client gives up.
                        let mut rest = String::new();
                        let _ = reader.read_line(&mut rest);
                        return;
                    }
                }
            }
        });
        (dir, path, rx)
    }

    #[test]
    fn calls_carry_fresh_ids_and_return_results() {
        let (_dir, path, rx) = fake_server(vec![
            Some(r#"{"id":$ID,"ok":true,"result":{"n":1}}"#.into()),
            Some(r#"{"id":$ID,"ok":true,"result":{"n":2}}"#.into()),
        ]);
        let mut client = Client::connect(&path).unwrap();
        assert_eq!(
            client.call(&json!({"op": "status"})).unwrap(),
            json!({"n": 1})
        );
        assert_eq!(
            client.call_op(&Op::KeyGet { key: "k-1".into() }).unwrap(),
            json!({"n": 2})
        );
        assert_eq!(rx.recv().unwrap(), json!({"id": 1, "op": "status"}));
        assert_eq!(
            rx.recv().unwrap(),
            json!({"id": 2, "op": "key.get", "key": "k-1"})
        );
    }

    #[test]
    fn requests_parse_back_as_the_daemon_parses_them() {
        let key = KeyPutArgs {
            file: None,
            key: Some("k-1".into()),
            port: Some("syd-1".into()),
            max_speed: Some(1000),
            single_use: true,
            vlan: Some(100),
            description: Some("Acme".into()),
            valid_from: Some(parse_rfc3339("2026-01-01T00:00:00+10:00").unwrap()),
            valid_until: None,
            inactive: true,
            host: Some("10.99.0.2".into()),
        }
        .request()
        .unwrap();
        let vxc = VxcArgs {
            file: None,
            id: Some("v-1".into()),
            name: Some("n".into()),
            key: Some("k-1".into()),
            rate: Some(100),
            a_port: Some("syd-2".into()),
            a_vlan: None,
            untagged: true,
            service_level_ref: Some("cc".into()),
            shutdown: false,
            a_host: None,
            vni: Some(17),
        }
        .request()
        .unwrap();
        let ops = vec![
            Op::VxcGet { id: "v-1".into() },
            Op::VxcDelete { id: "v-1".into() },
            Op::Status {},
            Op::PortList {},
            Op::KeyList {},
            Op::KeyGet { key: "k-1".into() },
            Op::KeyPut { key },
            Op::VxcList {},
            Op::VxcPut { vxc: vxc.clone() },
            Op::VxcPlan { vxc },
        ];
        let ok = r#"{"id":$ID,"ok":true,"result":{}}"#;
        let (_dir, path, rx) = fake_server(vec![Some(ok.into()); ops.len()]);
        let mut client = Client::connect(&path).unwrap();
        for op in &ops {
            client.call_op(op).unwrap();
            let sent = rx.recv().unwrap().to_string();
            let parsed = crate::protocol::parse_request(sent.as_bytes())
                .unwrap_or_else(|(_, f)| panic!("{sent}: {}", f.message));
            assert_eq!(&parsed.op, op, "{sent}");
        }
    }

    #[test]
    fn an_id_argument_is_sent_as_is_and_may_be_echoed() {
        let (_dir, path, rx) = fake_server(vec![Some(
            r#"{"id":$ID,"ok":true,"result":{"deleted":"v-1"}}"#.into(),
        )]);
        let mut client = Client::connect(&path).unwrap();
        let result = client.call_op(&Op::VxcDelete { id: "v-1".into() }).unwrap();
        assert_eq!(result, json!({"deleted": "v-1"}));
        assert_eq!(rx.recv().unwrap(), json!({"op": "vxc.delete", "id": "v-1"}));
    }

    #[test]
    fn refusals_keep_code_message_and_details() {
        let (_dir, path, _rx) = fake_server(vec![Some(
            r#"{"id":$ID,"ok":false,"error":{"code":"vlan_in_use","message":"VLAN 200 on port syd-1 is in use by VXC v-17; next available 201","port":"syd-1","next_available":201}}"#.into(),
        )]);
        let mut client = Client::connect(&path).unwrap();
        let err = client.call(&json!({"op": "vxc.put"})).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        let ClientError::Remote(remote) = err else {
            panic!("{err}")
        };
        assert_eq!(remote.code, "vlan_in_use");
        assert_eq!(remote.details.get("next_available"), Some(&json!(201)));
        assert_eq!(
            remote.to_string(),
            "vlan_in_use: VLAN 200 on port syd-1 is in use by VXC v-17; next available 201"
        );
        assert_eq!(remote.to_json()["port"], json!("syd-1"));
    }

    #[test]
    fn a_foreign_answer_id_is_a_protocol_error() {
        let (_dir, path, _rx) =
            fake_server(vec![Some(r#"{"id":99,"ok":true,"result":{}}"#.into())]);
        let mut client = Client::connect(&path).unwrap();
        let err = client.call(&json!({"op": "status"})).unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("answer id 99"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn garbage_and_missing_fields_are_protocol_errors() {
        for answer in [
            "not json",
            r#"{"id":$ID,"ok":true}"#,
            r#"{"id":$ID,"ok":"yes","result":{}}"#,
            r#"{"id":$ID,"ok":false,"error":{"code":5}}"#,
        ] {
            let (_dir, path, _rx) = fake_server(vec![Some(answer.into())]);
            let mut client = Client::connect(&path).unwrap();
            let err = client.call(&json!({"op": "status"})).unwrap_err();
            assert!(
                matches!(err, ClientError::Protocol { .. }),
                "{answer}: {err}"
            );
        }
    }

    #[test]
    fn silence_is_a_timeout_naming_the_op() {
        let (_dir, path, _rx) = fake_server(vec![None]);
        let mut client = Client::connect_with_timeout(&path, Duration::from_millis(200)).unwrap();
        let err = client.call(&json!({"op": "vxc.list"})).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("vxc.list"), "{err}");
    }

    #[test]
    fn a_closed_connection_is_reported() {
        let (_dir, path, _rx) = fake_server(vec![]);
        let mut client = Client::connect(&path).unwrap();
        let err = client.call(&json!({"op": "status"})).unwrap_err();
        // The server may close before or after reading: either way no answer arrives.
        assert!(
            matches!(err, ClientError::Closed { .. } | ClientError::Io { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_missing_socket_names_the_path_and_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = Client::connect(&path).err().unwrap();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("--socket"), "{text}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn vlans_compress_to_ranges() {
        assert_eq!(compress_vlans(&[]), "-");
        assert_eq!(compress_vlans(&[200]), "200");
        let mut vlans: Vec<u16> = (100..=130).collect();
        vlans.push(200);
        assert_eq!(compress_vlans(&vlans), "100-130,200");
        assert_eq!(compress_vlans(&[5, 3, 4, 4, 9, 10, 4093]), "3-5,9-10,4093");
    }

    #[test]
    fn tables_align_and_have_no_trailing_blanks() {
        let out = table(
            &["A", "LONGER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "".into()],
                vec!["z".into(), "".into(), "w".into()],
            ],
        );
        assert_eq!(out, "A     LONGER  C\nxxxx  y\nz             w\n");
    }

    #[test]
    fn field_lists_align_values() {
        assert_eq!(
            field_list(&[("id", "v-1".into()), ("created at", "now".into())]),
            "id:         v-1\ncreated at: now\n"
        );
    }

    #[test]
    fn ends_show_vlan_or_untagged_and_interface() {
        let end = EndView {
            port: "syd-1".into(),
            vlan: Some(200),
            untagged: None,
            interface: Some("eth1.200".into()),
            host: None,
        };
        assert_eq!(end_text(&end), "syd-1/200 (eth1.200)");
        let end = EndView {
            vlan: None,
            untagged: Some(true),
            interface: Some("eth1".into()),
            ..end
        };
        assert_eq!(end_text(&end), "syd-1/untagged (eth1)");
        let end = EndView {
            interface: None,
            ..end
        };
        assert_eq!(end_text(&end), "syd-1/untagged");
        let end = EndView {
            vlan: Some(100),
            untagged: None,
            interface: Some("vxc17".into()),
            host: Some("10.99.0.2".into()),
            ..end
        };
        assert_eq!(end_text(&end), "syd-1@10.99.0.2/100 (vxc17)");
    }

    #[test]
    fn a_vxc_across_hosts_shows_the_peer_the_tunnel_and_the_vni() {
        let view = serde_json::json!({"vxc": {"id": "v-1", "name": "n", "service_key": "k-1",
            "rate_mbps": 100, "service_level_ref": null, "state": "up",
            "created_at": "2026-11-26T10:00:00Z", "shutdown": false, "vni": 17,
            "a_end": {"port": "syd-1", "vlan": 200, "untagged": false, "interface": "eth1.200",
                "host": null},
            "b_end": {"port": "mel-1", "vlan": 100, "interface": "vxc17",
                "host": "10.99.0.2"}}});
        let text = render_vxc(&view).unwrap();
        assert!(
            text.contains("a-end:             syd-1/200 (eth1.200)\n"),
            "{text}"
        );
        assert!(
            text.contains("b-end:             mel-1@10.99.0.2/100 (vxc17)\n"),
            "{text}"
        );
        assert!(text.contains("vni:               17\n"), "{text}");
    }

    #[test]
    fn toml_bodies_accept_datetimes_and_refuse_unknown_fields() {
        let key: KeyRequest = parse_body(
            "key = \"k-1\"\nport = \"syd-1\"\nsingle_use = false\nmax_speed_mbps = 100\n\
             valid_from = 2026-01-01T00:00:00Z\nvalid_until = \"2026-02-01T00:00:00+01:00\"\n",
            false,
            "key",
            "k.toml",
        )
        .unwrap();
        assert_eq!(
            key.valid_from.unwrap(),
            parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
        );
        assert!(key.valid_until.is_some());
        assert!(key.active);

        let err = parse_body::<VxcRequest>(
            "id = \"v\"\nname = \"n\"\nservice_key = \"k\"\nrate_mbps = 1\ncolour = \"red\"\n[a_end]\nport = \"p\"\n",
            false,
            "vxc",
            "v.toml",
        )
        .unwrap_err();
        assert!(err.0.starts_with("v.toml: not a valid vxc object"), "{err}");
        assert!(err.0.contains("colour"), "{err}");

        let err = parse_body::<VxcRequest>("id = ", false, "vxc", "v.toml").unwrap_err();
        assert!(err.0.contains("not valid TOML"), "{err}");
    }

    #[test]
    fn json_bodies_are_recognised_by_name_or_brace() {
        let text = r#"{"id":"v-1","name":"n","service_key":"k","rate_mbps":10,"a_end":{"port":"syd-1","untagged":true}}"#;
        let vxc: VxcRequest = parse_body(text, false, "vxc", "-").unwrap();
        assert!(vxc.a_end.untagged);
        let vxc: VxcRequest = parse_body(&format!("\n {text}"), true, "vxc", "v.json").unwrap();
        assert_eq!(vxc.rate_mbps, 10);
    }

    #[test]
    fn renderers_refuse_other_shapes() {
        assert!(render_ports(&json!({"vxcs": []})).is_err());
        assert!(render_vxc(&json!({"vxc": {"id": 1}})).is_err());
        assert!(render_status(&json!({})).is_err());
    }

    #[test]
    fn uptime_reads_as_days_hours_minutes() {
        assert_eq!(duration_text(5), "5s");
        assert_eq!(duration_text(3 * 3600 + 2 * 60 + 5), "3h 2m 5s");
        assert_eq!(duration_text(86_400 + 61), "1d 0h 1m 1s");
    }
}
