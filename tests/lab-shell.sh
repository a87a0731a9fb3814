#!/usr/bin/env bash
# Boots the kernel lab (Debian's cloud kernel under qemu TCG) with a shell on this terminal.
#   tests/lab-shell.sh            interactive shell; `exit` powers off, Ctrl-A X kills qemu
#   tests/lab-shell.sh demo.sh    runs demo.sh in the guest instead, then powers off
#   LAB_RELEASE=1 tests/lab-shell.sh ...   the same with release builds of vxcd and vxcctl
# The guest has vxcd, vxcctl and latency (examples/latency.rs) in /lab (on PATH), iproute2,
# tcpdump, socat, busybox.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${LAB_RELEASE:-}" ]; then
  cargo build --quiet --release --bins --example lab --example latency
  exec target/release/examples/lab "$@"
fi
cargo build --quiet --bins --example lab --example latency
exec target/debug/examples/lab "$@"
