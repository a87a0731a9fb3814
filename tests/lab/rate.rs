//! Rate measurement across a VXC: paced UDP from one host to another, what arrives counted at
//! the receiver. Used by every lab scenario that checks a shaper.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::net::Netns;

/// Bound on waiting for the receiver to bind: a hang limit, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(60);

/// Makes each measurement's UDP port its own.
static SERIAL: AtomicU32 = AtomicU32::new(0);

/// UDP payload per datagram; on the shaped interface a frame is payload + 8 (UDP) + 20 (IPv4) +
/// 14 (Ethernet) bytes: the tag travels as metadata and TBF does not count it.
pub const PAYLOAD: usize = 1400;
pub const FRAME: usize = PAYLOAD + 8 + 20 + 14;

/// Sends UDP from `from` (a host address in `sender`) to `to:port` in `receiver` at `offer_mbps`
/// for `send_for`, and measures what arrives: frame bytes after the first datagram divided by the
/// time from the first to the last datagram (both measured). Returns Mbit/s.
pub fn measure_udp(
    sender: &Netns,
    receiver: &Netns,
    to: &str,
    offer_mbps: f64,
    send_for: Duration,
) -> (f64, u64, u64) {
    let port = 5001 + SERIAL.fetch_add(1, Ordering::Relaxed) as u16;
    let bind = format!("{to}:{port}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiving = receiver.spawn_in(move || {
        let socket =
            std::net::UdpSocket::bind(&bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = vec![0u8; 65536];
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        let mut frames_after_first = 0u64;
        // Ends after 2 s of quiet once the sender is done: the queue has drained.
        while let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(n, PAYLOAD, "datagram of unexpected size");
            let now = Instant::now();
            if first.is_none() {
                first = Some(now);
            } else {
                frames_after_first += 1;
            }
            last = now;
        }
        (first.map(|f| last.duration_since(f)), frames_after_first)
    });
    ready_rx.recv_timeout(LIMIT).expect("receiver did not bind");
    let target = format!("{to}:{port}");
    let sending = sender.spawn_in(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind sender");
        let datagram = vec![0x5au8; PAYLOAD];
        let bytes_per_s = offer_mbps * 1e6 / 8.0;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < send_for {
            // Paced: send what the offered rate allows so far, then yield the (single) vCPU.
            let due = (start.elapsed().as_secs_f64() * bytes_per_s / FRAME as f64) as u64;
            while sent < due {
                // A full socket buffer or a transient error is just a datagram not offered.
                let _ = socket.send_to(&datagram, &target);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    });
    let sent = sending.join().expect("sender thread");
    let (elapsed, frames) = receiving.join().expect("receiver thread");
    let elapsed = elapsed.expect("no datagram arrived");
    let mbps = (frames as f64 * FRAME as f64 * 8.0) / elapsed.as_secs_f64() / 1e6;
    eprintln!(
        "measured {mbps:.2} Mbit/s ({frames} frames of {FRAME} bytes after the first in {:.3} s; {sent} offered at {offer_mbps} Mbit/s) to {to}",
        elapsed.as_secs_f64()
    );
    (mbps, frames, sent)
}

/// Measures the rate from `sender` to `to` (in `receiver`) and asserts it is within 10 % of
/// `configured`. A stall of the emulator (the host's cores are shared) can only lower a
/// measurement, never raise it (the shaper's bucket is capped at its burst), so a measurement
/// below the range is taken once more and the higher one counts: a shaper at the wrong rate
/// fails both.
pub fn assert_rate(
    (sender, receiver, to): (&Netns, &Netns, &str),
    configured: f64,
    what: &str,
    context: &dyn Fn() -> String,
) {
    let (low, high) = (configured * 0.9, configured * 1.1);
    let offer = configured * 1.5;
    let send_for = Duration::from_secs(3);
    let mut measured = vec![measure_udp(sender, receiver, to, offer, send_for).0];
    if measured[0] < low {
        measured.push(measure_udp(sender, receiver, to, offer, send_for).0);
    }
    let best = measured.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        (low..=high).contains(&best),
        "{what}: measured {measured:.2?} Mbit/s, configured {configured} Mbit/s (allowed {low:.1} to {high:.1})\n{}",
        context()
    );
}
