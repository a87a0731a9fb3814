//! Generates the man pages and shell completions of `vxcd` and `vxcctl` from the same clap
//! definitions the binaries parse with (src/cli/), so the package's documentation cannot drift
//! from `--help`.
//!
//! They are written to `<target>/<profile>/assets/` (derived from OUT_DIR, whose hashed name
//! changes between builds): `[package.metadata.deb]` names them as `target/release/assets/...`,
//! which cargo-deb maps to the profile it builds. Layout:
//! `man/vxcd.8`, `man/vxcctl.1`, `man/vxcctl-<subcommand>.1`, `completions/{vxcd,vxcctl}.bash`,
//! `completions/_{vxcd,vxcctl}` (zsh), `completions/{vxcd,vxcctl}.fish`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

// The build script only needs the definitions; the binaries use every field.
#[allow(dead_code)]
#[path = "src/cli/vxcctl_args.rs"]
mod vxcctl_args;
#[allow(dead_code)]
#[path = "src/cli/vxcd_args.rs"]
mod vxcd_args;

fn main() {
    println!("cargo::rerun-if-changed=src/cli");
    println!("cargo::rerun-if-changed=build.rs");
    if let Err(e) = generate() {
        // A build script reports with panic; the message names what could not be written.
        panic!("generating man pages and completions: {e}");
    }
}

fn generate() -> io::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "OUT_DIR is not set (not run by cargo?)",
        )
    })?);
    // OUT_DIR is <target>/<profile>/build/vxcd-<hash>/out.
    let profile_dir = out_dir.ancestors().nth(3).ok_or_else(|| {
        io::Error::other(format!(
            "OUT_DIR {} is not <profile>/build/<pkg>/out",
            out_dir.display()
        ))
    })?;
    let assets = profile_dir.join("assets");
    let man = assets.join("man");
    let completions = assets.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).map_err(|e| named(e, dir))?;
    }

    let vxcd = vxcd_args::Args::command();
    render_man(vxcd.clone(), "8", &man, "vxcd")?;
    let vxcctl = vxcctl_args::Cli::command();
    man_tree(vxcctl.clone(), &man, "vxcctl")?;

    for (mut cmd, name) in [(vxcd, "vxcd"), (vxcctl, "vxcctl")] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd, name, &completions)
                .map_err(|e| named(e, &completions))?;
        }
    }
    Ok(())
}

/// `<name>.1` for the command and `<name>-<sub>.1` for every subcommand, recursively (what
/// `man vxcctl-key-put` finds; the parent page lists them).
fn man_tree(cmd: clap::Command, dir: &Path, name: &str) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_name = format!("{name}-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(sub_name.clone())
            .bin_name(sub_name.replace('-', " "));
        man_tree(sub, dir, &sub_name)?;
    }
    render_man(cmd, "1", dir, name)
}

fn render_man(cmd: clap::Command, section: &str, dir: &Path, name: &str) -> io::Result<()> {
    let path = dir.join(format!("{name}.{section}"));
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name)
        .section(section)
        .manual("vxcd")
        .render(&mut text)?;
    // Written only when changed, so an unchanged page keeps its mtime.
    if fs::read(&path).ok().as_deref() != Some(&text[..]) {
        fs::write(&path, text).map_err(|e| named(e, &path))?;
    }
    Ok(())
}

fn named(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
