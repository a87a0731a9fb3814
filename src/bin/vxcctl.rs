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
    })
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help and --version).
    let cli = Cli::parse();
    let json = cli.json;
    let socket = client::socket_path(cli.socket);
    let is_verify = matches!(cli.command, Command::Verify { .. });
    let (op, render) = match request(cli.command) {
        Ok(request) => request,
        Err(err) => return fail(2, &err.to_string()),
    };
    let result = Client::connect_with_timeout(&socket, Duration::from_secs(cli.timeout))
        .and_then(|mut client| client.call_op(&op));
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
