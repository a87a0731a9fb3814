//! vxcctl: the operator's command line for vxcd. Parses the command line, maps each command to a
//! protocol operation and a renderer (both in `vxcd::client`), and turns failures into exit codes:
//! 0 success, 1 the daemon refused, 2 usage or connection errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vxcd::client::{self, Client, ClientError, KeyPutArgs, Renderer, VxcArgs};
use vxcd::protocol::Op;

#[derive(Parser, Debug)]
#[command(
    name = "vxcctl",
    version,
    about = "Inspect and change what vxcd enforces: ports, service keys, VXCs",
    after_help = "Rates are in Mbps. Exit status: 0 success, 1 vxcd refused the request (code and \
                  message on stderr; with --json the error object on stdout too), 2 usage or \
                  connection error."
)]
struct Cli {
    /// vxcd's control socket [env: VXCD_SOCKET] [default: /run/vxcd/control.sock]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    socket: Option<PathBuf>,
    /// Print the daemon's result object as pretty JSON instead of a table
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// Seconds to wait for vxcd's answer
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30, help_heading = "Global options",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Daemon version, uptime, counts, 802.1Q support, last reconcile
    Status,
    /// Configured ports with their VLANs in use
    Ports,
    /// All service keys
    Keys,
    /// One service key, or create/update one
    #[command(subcommand)]
    Key(KeyCommand),
    /// All VXCs
    Vxcs,
    /// One VXC, or create/update/plan/delete one
    #[command(subcommand)]
    Vxc(VxcCommand),
    /// Prove a VXC's tags on the wire with probe frames (all VXCs without an id); exit 1 if any fails
    Verify {
        /// VXC id
        id: Option<String>,
    },
    /// The packet inspector's counters per VXC end and violations per port
    Inspect,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Show one service key
    Show {
        /// Service key id
        id: String,
    },
    /// Create a service key, or change its active flag and validity window
    Put(KeyPutArgs),
}

#[derive(Subcommand, Debug)]
enum VxcCommand {
    /// Show one VXC
    Show {
        /// VXC id
        id: String,
    },
    /// Create a VXC, or change its name, rate or service level reference
    Put(VxcArgs),
    /// Check a VXC put without changing anything: shows the VXC it would make
    Plan(VxcArgs),
    /// Delete a VXC (its VLANs are freed; a single-use key stays used)
    Delete {
        /// VXC id
        id: String,
    },
}

impl Command {
    /// The operation to send and how to show its result.
    fn request(self) -> Result<(Op, Renderer), client::InputError> {
        Ok(match self {
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
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help and --version).
    let cli = Cli::parse();
    let json = cli.json;
    let socket = client::socket_path(cli.socket);
    let is_verify = matches!(cli.command, Command::Verify { .. });
    let (op, render) = match cli.command.request() {
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
