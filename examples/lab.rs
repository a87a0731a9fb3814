//! Boots the kernel lab with a shell on this terminal: `cargo run --example lab`, or
//! `tests/lab-shell.sh` (which builds vxcd and vxcctl first so they are in the guest's /lab).
//! With a file argument, runs that shell script in the guest instead and powers off.

#[path = "../tests/lab/mod.rs"]
mod lab;

fn main() {
    let script = match std::env::args().nth(1) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("lab: reading script {path}: {e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    if let Err(e) = lab::shell(script) {
        eprintln!("lab: {e}");
        std::process::exit(1);
    }
}
