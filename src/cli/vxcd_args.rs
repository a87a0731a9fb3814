//! `vxcd`'s command line (also compiled by build.rs for the man page and completions).

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "vxcd",
    version,
    about = "Edge-switch agent: service keys and VXCs into kernel state",
    long_about = "vxcd, the edge-switch agent: receives service keys and VXCs over its control \
                  socket and programs them into the kernel (802.1Q subinterfaces, tc pipes, TBF \
                  shaping), keeping what it acknowledged across restarts and repairing drift. \
                  vxcctl(1) is its operator's command line.",
    after_help = "Runs as a systemd service (vxcd.service, Type=notify). The state lives in the \
                  [state] dir (default /var/lib/vxcd), the control socket at [control] socket \
                  (default /run/vxcd/control.sock); logs go to the journal: journalctl -u vxcd."
)]
pub struct Args {
    /// Configuration file
    #[arg(long, value_name = "PATH", default_value = "/etc/vxcd/vxcd.toml")]
    pub config: PathBuf,
    /// Parse and validate the configuration (ports, socket mode, group, writers), print what it
    /// holds or the error, and exit 0 or 1 without touching the kernel, the state or the socket
    #[arg(long)]
    pub check_config: bool,
    /// Log at debug level
    #[arg(long, short)]
    pub verbose: bool,
}
