//! vxcctl: the operator's command line for vxcd. Parses the command line, maps each command to a
//! protocol operation and a renderer (both in `vxcd::client`), and turns failures into exit codes:
//! 0 success, 1 the daemon refused, 2 usage or connection errors.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vxcd::cli::vxcctl_args::{Cli, Command, KeyCommand, VxcCommand};
use vxcd::client::{self, Client, ClientError, Renderer};
use vxcd::protocol::Op;

/// The operation to send for `command` and how to show its result.
fn request(command: Command) -> Result<(Op, Renderer), client::InputError> {
    Ok(match command {
        Command::Status => (Op::Status {}, client::render_status),
        Command::Ports => (Op::PortList {}, client::render_ports),
        Command::Keys => (Op::KeyList {}, client::render_keys),
        Command::Key(KeyCommand::Show { id }) => (Op::KeyGet { key: id }, client::render_key),
        Command::Key(KeyCommand::Put(args)) => (
            Op::KeyPut {
                key: args.request()?,
            },
            client::render_key,
        ),
        Command::Vxcs => (Op::VxcList {}, client::render_vxcs),
        Command::Vxc(VxcCommand::Show { id }) => (Op::VxcGet { id }, client::render_vxc),
        Command::Vxc(VxcCommand::Put(args)) => (
            Op::VxcPut {
                vxc: args.request()?,
            },
            client::render_vxc,
        ),
        Command::Vxc(VxcCommand::Plan(args)) => (
            Op::VxcPlan {
                vxc: args.request()?,
            },
            client::render_vxc,
        ),
        Command::Vxc(VxcCommand::Delete { id }) => {
            (Op::VxcDelete { id }, client::render_deleted_vxc)
        }
        Command::Verify { id } => (Op::Verify { id }, client::render_verify),
        Command::Inspect => (Op::Inspect {}, client::render_inspect),
        Command::Stats { id } => (Op::VxcStats { id }, client::render_stats),
        // Both take a vxc.get first (see main).
        Command::Vxc(VxcCommand::Shutdown { id }) | Command::Vxc(VxcCommand::Enable { id }) => {
            (Op::VxcGet { id }, client::render_vxc)
        }
        Command::Watch { since } => (Op::Watch { since }, client::render_json),
    })
}

/// `vxcctl watch`: one line per event until the daemon closes the stream or the user stops it.
fn watch(socket: &std::path::Path, op: &Op, json: bool) -> ExitCode {
    use std::io::{BufRead, BufReader};
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) => return fail(2, &format!("connecting to {}: {e}", socket.display())),
    };
    let Ok(mut line) = serde_json::to_string(op) else {
        return fail(2, "cannot encode the watch request");
    };
    line.push('\n');
    if let Err(e) = stream.write_all(line.as_bytes()) {
        return fail(2, &format!("writing to {}: {e}", socket.display()));
    }
    let mut lines = BufReader::new(stream).lines();
    match lines.next() {
        Some(Ok(first)) => {
            let answer: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
            if answer["ok"] != serde_json::Value::Bool(true) {
                return fail(1, &format!("watch refused: {first}"));
            }
        }
        _ => return fail(2, "vxcd closed the connection before answering"),
    }
    for line in lines {
        let Ok(line) = line else { break };
        let text = if json {
            format!("{line}\n")
        } else {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(event) => client::render_event(&event),
                Err(_) => format!("{line}\n"),
            }
        };
        if print(&text) != ExitCode::SUCCESS {
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help and --version).
    let cli = Cli::parse();
    let json = cli.json;
    let socket = client::socket_path(cli.socket);
    let is_verify = matches!(cli.command, Command::Verify { .. });
    let is_watch = matches!(cli.command, Command::Watch { .. });
    let toggle = match &cli.command {
        Command::Vxc(VxcCommand::Shutdown { .. }) => Some(true),
        Command::Vxc(VxcCommand::Enable { .. }) => Some(false),
        _ => None,
    };
    let (op, render) = match request(cli.command) {
        Ok(request) => request,
        Err(err) => return fail(2, &err.to_string()),
    };
    if is_watch {
        return watch(&socket, &op, json);
    }
    let result = Client::connect_with_timeout(&socket, Duration::from_secs(cli.timeout)).and_then(
        |mut client| {
            let shown = client.call_op(&op)?;
            match toggle {
                None => Ok(shown),
                Some(shutdown) => {
                    let vxc = client::with_shutdown(&shown, shutdown).map_err(|detail| {
                        ClientError::Protocol {
                            path: socket.clone(),
                            op: "vxc.get".into(),
                            detail,
                        }
                    })?;
                    client.call_op(&Op::VxcPut { vxc })
                }
            }
        },
    );
    match result {
        Ok(result) => {
            let rendered = if json {
                client::render_json(&result)
            } else {
                render(&result)
            };
            match rendered {
                // A verification that ran but failed is the operator's signal: exit 1.
                Ok(text) if is_verify && result["pass"] != serde_json::Value::Bool(true) => {
                    let _ = print(&text);
                    fail(1, "verification failed")
                }
                Ok(text) => print(&text),
                Err(detail) => fail(
                    2,
                    &format!(
                        "unexpected answer from vxcd at {}: {detail}",
                        socket.display()
                    ),
                ),
            }
        }
        Err(ClientError::Remote(remote)) => {
            if json {
                // Scripts get the details (next_available, held_by, ...) without parsing text.
                if let Ok(text) = client::render_json(&remote.to_json()) {
                    let _ = print(&text);
                }
            }
            fail(1, &remote.to_string())
        }
        Err(err) => fail(err.exit_code(), &err.to_string()),
    }
}

fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`vxcctl keys | head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(2, &format!("writing to standard output: {e}")),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("vxcctl: {message}");
    ExitCode::from(code)
}
