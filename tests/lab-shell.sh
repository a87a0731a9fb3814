#!/usr/bin/env bash
# Boots the kernel lab (Debian's cloud kernel under qemu TCG) with a shell on this terminal.
#   tests/lab-shell.sh            interactive shell; `exit` powers off, Ctrl-A X kills qemu
#   tests/lab-shell.sh demo.sh    runs demo.sh in the guest instead, then powers off
# The guest has vxcd and vxcctl in /lab (on PATH), iproute2, tcpdump, busybox.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins --example lab
exec target/debug/examples/lab "$@"
