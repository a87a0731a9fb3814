//! `vxcctl`'s command line (also compiled by build.rs for the man pages and completions).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser, Debug)]
#[command(
    name = "vxcctl",
    version,
    about = "Inspect and change what vxcd enforces: ports, service keys, VXCs",
    after_help = "Rates are in Mbps. Exit status: 0 success, 1 vxcd refused the request (code and \
                  message on stderr; with --json the error object on stdout too), 2 usage or \
                  connection error."
)]
pub struct Cli {
    /// vxcd's control socket [env: VXCD_SOCKET] [default: /run/vxcd/control.sock]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub socket: Option<PathBuf>,
    /// Print the daemon's result object as pretty JSON instead of a table
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Seconds to wait for vxcd's answer
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30, help_heading = "Global options",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// The kernel's counters of each VXC end and its shaper (all VXCs without an id)
    Stats {
        /// VXC id
        id: Option<String>,
    },
    /// Print vxcd's events as they happen (VXC changes and states, drift repairs, ...) until
    /// interrupted
    Watch {
        /// Replay the events after this seq first (from vxcd's ring of the last 4096)
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Show one service key
    Show {
        /// Service key id
        id: String,
    },
    /// Create a service key, or change its active flag and validity window
    Put(KeyPutArgs),
}

#[derive(Subcommand, Debug)]
pub enum VxcCommand {
    /// Show one VXC
    Show {
        /// VXC id
        id: String,
    },
    /// Create a VXC, or change its name, rate, service level reference, A-End VLAN or shutdown
    Put(VxcArgs),
    /// Check a VXC put without changing anything: shows the VXC it would make
    Plan(VxcArgs),
    /// Delete a VXC (its VLANs are freed; a single-use key stays used)
    Delete {
        /// VXC id
        id: String,
    },
    /// Shut a VXC down: it keeps its VLANs, but no frame crosses it
    Shutdown {
        /// VXC id
        id: String,
    },
    /// Bring a shut-down VXC back
    Enable {
        /// VXC id
        id: String,
    },
}

/// Parses an RFC 3339 timestamp flag (`2026-01-01T00:00:00Z`).
pub fn parse_rfc3339(raw: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|e| format!("{raw:?} is not an RFC 3339 time like 2026-01-01T00:00:00Z: {e}"))
}

/// `key put`: a service key from flags or from a file holding the protocol's key object.
#[derive(clap::Args, Clone, Debug)]
pub struct KeyPutArgs {
    /// Read the key from a TOML or JSON file holding the protocol's key object (fields key, port,
    /// description, single_use, max_speed_mbps, vlan, valid_from, valid_until, active); `-` reads
    /// standard input
    #[arg(long, value_name = "PATH", conflicts_with_all = [
        "key", "port", "max_speed", "single_use", "vlan", "description", "valid_from",
        "valid_until", "inactive", "host",
    ])]
    pub file: Option<PathBuf>,
    /// Service key id
    #[arg(long, value_name = "KEY", required_unless_present = "file")]
    pub key: Option<String>,
    /// B-End port the key is created on
    #[arg(long, value_name = "PORT", required_unless_present = "file")]
    pub port: Option<String>,
    /// Highest rate a VXC built from the key may ask for, in Mbps
    #[arg(long, value_name = "MBPS", required_unless_present = "file")]
    pub max_speed: Option<u32>,
    /// The key can be redeemed once (needs --vlan)
    #[arg(long)]
    pub single_use: bool,
    /// B-End VLAN of a single-use key
    #[arg(long, value_name = "VLAN")]
    pub vlan: Option<u16>,
    /// Free-text label
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Start of the validity window (RFC 3339)
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub valid_from: Option<OffsetDateTime>,
    /// End of the validity window (RFC 3339)
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub valid_until: Option<OffsetDateTime>,
    /// Store the key switched off (it cannot be redeemed until put again without --inactive)
    #[arg(long)]
    pub inactive: bool,
    /// The port is on a peer edge host: that host's core address (the copy of a key held by the
    /// redeemer's host)
    #[arg(long, value_name = "ADDRESS")]
    pub host: Option<String>,
}

/// `vxc put` and `vxc plan`: a VXC from flags or from a file holding the protocol's vxc object.
#[derive(clap::Args, Clone, Debug)]
pub struct VxcArgs {
    /// Read the VXC from a TOML or JSON file holding the protocol's vxc object (fields id, name,
    /// service_key, rate_mbps, service_level_ref, a_end = {port, vlan, untagged}); `-` reads
    /// standard input
    #[arg(long, value_name = "PATH", conflicts_with_all = [
        "id", "name", "key", "rate", "a_port", "a_vlan", "untagged", "service_level_ref",
        "shutdown", "a_host", "vni",
    ])]
    pub file: Option<PathBuf>,
    /// VXC id
    #[arg(long, value_name = "ID", required_unless_present = "file")]
    pub id: Option<String>,
    /// Name shown to operators
    #[arg(long, value_name = "NAME", required_unless_present = "file")]
    pub name: Option<String>,
    /// Service key the VXC is built from (its port is the B-End)
    #[arg(long, value_name = "KEY", required_unless_present = "file")]
    pub key: Option<String>,
    /// Rate limit in Mbps, both directions
    #[arg(long, value_name = "MBPS", required_unless_present = "file")]
    pub rate: Option<u32>,
    /// A-End port
    #[arg(long, value_name = "PORT", required_unless_present = "file")]
    pub a_port: Option<String>,
    /// A-End VLAN; omitted: vxcd assigns the first free one
    #[arg(long, value_name = "VLAN", conflicts_with = "untagged")]
    pub a_vlan: Option<u16>,
    /// Untagged A-End: the VXC takes the whole A-End port
    #[arg(long)]
    pub untagged: bool,
    /// Billing reference (cost centre)
    #[arg(long, value_name = "REF")]
    pub service_level_ref: Option<String>,
    /// Shut the VXC down: kept with its VLANs, but no frame crosses (omitted: carry frames)
    #[arg(long)]
    pub shutdown: bool,
    /// The A-End port is on a peer edge host: that host's core address (needs --a-vlan or
    /// --untagged, and --vni)
    #[arg(long, value_name = "ADDRESS")]
    pub a_host: Option<String>,
    /// VXLAN network identifier carrying a VXC with an end on a peer (1..=16777215)
    #[arg(long, value_name = "VNI")]
    pub vni: Option<u32>,
}
