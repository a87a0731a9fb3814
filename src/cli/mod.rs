//! The command lines of `vxcd` and `vxcctl` (clap definitions only). Each file is self-contained
//! (clap, std and time, nothing of this crate) because `build.rs` compiles the same files to
//! generate the man pages and shell completions from them: what `--help` says and what the
//! package's man pages say come from one definition.

pub mod vxcctl_args;
pub mod vxcd_args;
