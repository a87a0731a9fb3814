//! The kernel lab: scenarios that need a kernel with 802.1Q (and the rest of the cloud kernel's
//! modules) run as ordinary `cargo test` integration tests inside a qemu (TCG) guest booting
//! Debian's cloud kernel. See "The kernel lab" in README.md.
//!
//! Use from an integration test file:
//!
//! ```ignore
//! mod lab;
//! use lab::net::{Netns, veth};
//!
//! lab::lab_tests! {
//!     fn vlan_ping() {
//!         let a = Netns::new("a");
//!         // ... assert!(...)
//!     }
//! }
//! ```
//!
//! On the host, the first lab test of the executable boots one VM (shared by all lab tests of that
//! executable) whose /init re-runs this executable once per scenario with `VXCD_LAB_GUEST=1`,
//! where the test body runs for real. Each host test then reports its own scenario's verdict.
//!
//! Modules: `vm` (host side: kernel, initramfs, qemu), `net` (namespaces, links, ping, capture,
//! state snapshot: usable in the guest and on the host), `proc` (background daemons, bounded
//! waits), `cpio` (archive writer), `sysroot` (the real-systemd tier: a Debian root with systemd as
//! PID 1 on an ext4 image, tests/lab_systemd.rs).
#![allow(dead_code)] // each test executable uses a different part of the harness

pub mod cpio;
pub mod net;
pub mod proc;
pub mod rate;
pub mod sysroot;
pub mod vm;

use std::io::Write;
use std::sync::OnceLock;

/// Set (to "1") in the guest for the re-run test executable and for the lab shell.
pub const GUEST_ENV: &str = "VXCD_LAB_GUEST";

/// True inside the lab VM.
pub fn in_guest() -> bool {
    std::env::var(GUEST_ENV).is_ok_and(|v| v == "1")
}

/// Path of one of the project's binaries (`vxcd`, `vxcctl`): /lab/<name> in the guest, cargo's
/// build output on the host. Panics naming the binary when it does not exist.
pub fn bin(name: &str) -> std::path::PathBuf {
    let path = if in_guest() {
        std::path::PathBuf::from(format!("/lab/{name}"))
    } else {
        vm::host_binary(name)
            .unwrap_or_else(|| panic!("binary {name} was not built (not in cargo's output)"))
    };
    assert!(
        path.is_file(),
        "binary {name} not found at {}",
        path.display()
    );
    path
}

/// Declares lab scenarios. Each `fn name() { body }` becomes a `#[test] fn name()`. One block
/// per test file (it defines the list of the file's scenarios, `LAB_SCENARIOS`).
#[macro_export]
macro_rules! lab_tests {
    ($( $(#[$meta:meta])* fn $name:ident() $body:block )*) => {
        /// Every lab scenario of this test executable, in the order the VM runs them.
        const LAB_SCENARIOS: &[&str] = &[$(concat!(module_path!(), "::", stringify!($name))),*];
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                let name = concat!(module_path!(), "::", stringify!($name));
                $crate::lab::scenario(name, LAB_SCENARIOS, || $body);
            }
        )*
    };
}
#[allow(unused_imports)] // used by test files, not by the launcher
pub use crate::lab_tests;

static VM: OnceLock<Result<vm::VmRun, String>> = OnceLock::new();

/// Writes past libtest's output capture, so timings show in a plain `cargo test` run.
fn tell(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The body of every lab `#[test]`: in the guest, runs the scenario; on the host, boots the shared
/// VM (first caller) and turns this scenario's outcome into pass or fail.
///
/// `name` and `all` are module paths (`crate::module::test`); libtest names tests without the
/// crate.
pub fn scenario(name: &str, all: &[&str], body: impl FnOnce()) {
    let test_name = |path: &str| {
        path.split_once("::")
            .map_or(path, |(_, rest)| rest)
            .to_string()
    };
    let name = &test_name(name);
    let all: Vec<String> = all.iter().map(|p| test_name(p)).collect();
    if in_guest() {
        install_snapshot_on_panic();
        body();
        return;
    }
    let run = VM.get_or_init(|| {
        let selected = selected_scenarios(&all);
        let run = vm::boot(vm::GuestMode::Scenarios(selected.clone()), false);
        if let Ok(run) = &run {
            let mut summary = format!(
                "lab: {} scenario(s); {}",
                selected.len(),
                run.boot_summary()
            );
            for name in &selected {
                let state = match run.verdict(name) {
                    vm::Verdict::Passed { guest_secs, .. } => format!("ok      {guest_secs:6.2} s"),
                    vm::Verdict::Failed { guest_secs, .. } => format!("FAILED  {guest_secs:6.2} s"),
                    vm::Verdict::Unfinished { .. } => "UNFINISHED".into(),
                    vm::Verdict::NotStarted => "not started".into(),
                };
                summary.push_str(&format!("\nlab:   {state}  {name}"));
            }
            summary.push_str(&format!("\nlab: console in {}", run.console_log.display()));
            tell(&summary);
        }
        run
    });
    let run = match run {
        Ok(run) => run,
        Err(e) => panic!("lab scenario {name}: the lab VM could not run: {e}"),
    };
    let console = |output: &[String]| output.join("\n");
    let failure = match run.verdict(name) {
        vm::Verdict::Passed { guest_secs, .. } => {
            tell(&format!("lab: {name}: ok in {guest_secs:.2} s in the guest (VM wall {:.1} s)", run.wall.as_secs_f64()));
            return;
        }
        vm::Verdict::Failed { rc, guest_secs, output } => format!(
            "lab scenario {name} FAILED in the guest (exit status {rc}{}) after {guest_secs:.2} s\n\
             ---- guest console for {name} ----\n{}\n---- end of guest console for {name} ----",
            if rc == 124 || rc == 143 { ", killed by the per-scenario timeout" } else { "" },
            console(output)
        ),
        vm::Verdict::Unfinished { output } => format!(
            "lab scenario {name} did not finish: {}\n---- guest console for {name} ----\n{}\n---- end ----",
            run.abnormal_end.as_deref().unwrap_or("the guest stopped"),
            console(output)
        ),
        vm::Verdict::NotStarted => format!(
            "lab scenario {name} never started in the guest: {}\n---- last guest console lines ----\n{}\n---- end ----",
            run.abnormal_end.as_deref().unwrap_or("it was not in the VM's list"),
            run.console_tail(60)
        ),
    };
    // The guest's panic message and backtrace are in the console; a host-side panic message
    // and backtrace would only bury them. libtest shows this test's captured stdout on failure.
    println!("{failure}");
    std::panic::resume_unwind(Box::new(failure));
}

/// The scenarios libtest's own filters select (`cargo test --test X name`, `--exact`, `--skip`),
/// so running one scenario does not run them all in the VM.
fn selected_scenarios(all: &[String]) -> Vec<String> {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut exact = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            "--skip" => skips.extend(args.next()),
            "--test-threads" | "--logfile" | "--format" | "--color" | "-Z" | "--shuffle-seed" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            filter => filters.push(filter.to_string()),
        }
    }
    let matches = |name: &str, pattern: &str| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    all.iter()
        .filter(|name| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|name| !skips.iter().any(|s| matches(name, s)))
        .cloned()
        .collect()
}

/// In the guest, a failing assertion is followed by the network state at that moment, before
/// unwinding drops the scenario's namespaces.
fn install_snapshot_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("{}", net::snapshot());
    }));
}

/// Boots the lab with an interactive shell on this terminal (or runs `script` in the guest).
/// Used by the launcher (examples/lab.rs, tests/lab-shell.sh).
pub fn shell(script: Option<String>) -> Result<(), String> {
    let run = vm::boot(vm::GuestMode::Shell { script }, true)?;
    tell(&format!("lab: {}", run.boot_summary()));
    match run.abnormal_end {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
