//! Request latency while a full reconcile pass runs (tests/lab/scale.sh runs it in the kernel lab;
//! tests/lab-shell.sh puts it in the guest's /lab next to vxcd and vxcctl):
//!
//! ```text
//! latency SOCKET VXCD_PID [VXC_ID [MIN_SAMPLES [MAX_PASSES]]]     (defaults: v-1 200 3)
//! ```
//!
//! First a baseline with no pass running (MIN_SAMPLES of each op). Then, for `vxc.get` and then for
//! `vxc.put`, cycles of: wait until vxcd is quiet (no pass or event burst ended for a second),
//! SIGHUP to vxcd (a config reload runs a full pass at once), then that op sent one at a time on
//! one connection, each round trip recorded, until `status` (on a second connection) shows
//! `reconcile_passes` past its value before the SIGHUP; cycles repeat until MIN_SAMPLES samples or
//! MAX_PASSES passes. The `vxc.get` reads VXC_ID; the `vxc.put` is a real write: VXC_ID put back as
//! it is with its rate alternating between its rate plus one and its rate (a TBF change and a
//! journal record each).
//!
//! Prints p50/p99/max per op and phase, the passes run and how long each took (SIGHUP to the
//! status that shows it done: an upper bound, to a few ms). Exits 1 if any request fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One connection to the control socket: newline-delimited JSON, one request in flight.
struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl Conn {
    fn open(path: &str) -> Result<Conn, String> {
        let stream = UnixStream::connect(path).map_err(|e| format!("connecting to {path}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(900)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Conn {
            writer: stream,
            reader,
            line: String::new(),
        })
    }

    /// Sends one request line and reads its answer: the round trip and the answer's `result`, or
    /// the answer as a failure.
    fn call(&mut self, request: &str) -> Result<(Duration, Value), String> {
        let started = Instant::now();
        self.writer
            .write_all(request.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| format!("sending: {e}"))?;
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .map_err(|e| format!("reading the answer: {e}"))?;
        let took = started.elapsed();
        if n == 0 {
            return Err("vxcd closed the connection".into());
        }
        let answer: Value = serde_json::from_str(&self.line)
            .map_err(|e| format!("answer is not JSON ({e}): {}", self.line.trim_end()))?;
        if answer["ok"] != Value::Bool(true) {
            return Err(format!("refused: {}", self.line.trim_end()));
        }
        Ok((took, answer["result"].clone()))
    }

    /// `reconcile_passes` and `own_event_bursts` of `status`.
    fn counters(&mut self) -> Result<(u64, u64), String> {
        let (_, status) = self.call(r#"{"op":"status"}"#)?;
        let passes = status["reconcile_passes"]
            .as_u64()
            .ok_or_else(|| format!("status without reconcile_passes: {status}"))?;
        Ok((passes, status["own_event_bursts"].as_u64().unwrap_or(0)))
    }

    fn passes(&mut self) -> Result<u64, String> {
        Ok(self.counters()?.0)
    }

    /// Waits until neither a pass nor a burst of kernel events has ended for [`QUIET`]: the
    /// events of the requests before are judged, and any pass they started is done.
    fn settle(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut last = self.counters()?;
        let mut since = Instant::now();
        while since.elapsed() < QUIET {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.counters()?;
            if now != last {
                (last, since) = (now, Instant::now());
            }
            if started.elapsed() > PASS_LIMIT {
                return Err("vxcd did not get quiet (passes or event bursts going on)".into());
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Get,
    Put,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Get => "vxc.get",
            Kind::Put => "vxc.put",
        }
    }
}

/// Builds the requests of one op: a get of the VXC, or a put of it as it is but for its rate.
struct Requests {
    get: String,
    put: [String; 2],
    next_put: usize,
}

impl Requests {
    fn new(conn: &mut Conn, id: &str) -> Result<Requests, String> {
        let get = json!({"op": "vxc.get", "id": id}).to_string();
        let (_, result) = conn.call(&get).map_err(|e| format!("vxc.get {id}: {e}"))?;
        // `{"vxc": {...}}`
        let vxc = &result["vxc"];
        let rate = vxc["rate_mbps"]
            .as_u64()
            .ok_or_else(|| format!("VXC {id} has no rate_mbps: {vxc}"))?;
        let end = &vxc["a_end"];
        let mut a_end = json!({"port": end["port"]});
        if end["untagged"] == Value::Bool(true) {
            a_end["untagged"] = Value::Bool(true);
        } else if !end["vlan"].is_null() {
            a_end["vlan"] = end["vlan"].clone();
        }
        if !end["host"].is_null() {
            a_end["host"] = end["host"].clone();
        }
        let put = |rate: u64| {
            let mut body = json!({
                "id": id,
                "name": vxc["name"],
                "service_key": vxc["service_key"],
                "rate_mbps": rate,
                "a_end": a_end,
            });
            for field in ["service_level_ref", "vni"] {
                if !vxc[field].is_null() {
                    body[field] = vxc[field].clone();
                }
            }
            if vxc["shutdown"] == Value::Bool(true) {
                body["shutdown"] = Value::Bool(true);
            }
            json!({"op": "vxc.put", "vxc": body}).to_string()
        };
        // The first put changes the rate (rate + 1), the next puts it back, and so on.
        Ok(Requests {
            get,
            put: [put(rate + 1), put(rate)],
            next_put: 0,
        })
    }

    fn next(&mut self, kind: Kind) -> &str {
        match kind {
            Kind::Get => &self.get,
            Kind::Put => {
                let i = self.next_put;
                self.next_put ^= 1;
                &self.put[i]
            }
        }
    }
}

/// `p50 1.23 ms p99 4.56 ms max 7.89 ms (n=300)`.
fn summary(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    let at = |q: f64| {
        let rank = (q * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    let ms = |d: Duration| {
        let ms = d.as_secs_f64() * 1e3;
        if ms >= 100.0 {
            format!("{ms:.0} ms")
        } else if ms >= 10.0 {
            format!("{ms:.1} ms")
        } else {
            format!("{ms:.2} ms")
        }
    };
    format!(
        "p50 {} p99 {} max {} (n={})",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(*samples.last().unwrap()),
        samples.len()
    )
}

fn hangup(pid: i32) -> Result<(), String> {
    // SAFETY: kill(2) with a pid given on the command line and a signal number; no memory shared.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(format!(
            "SIGHUP to {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// How often the status connection is asked whether the pass is done (between samples).
const POLL: Duration = Duration::from_millis(10);
/// A pass not done by then is taken as lost.
const PASS_LIMIT: Duration = Duration::from_secs(900);
/// How long vxcd must have run no pass and judged no event burst to count as idle.
const QUIET: Duration = Duration::from_secs(1);

/// One pass measured: SIGHUP to done, and the samples taken meanwhile.
type Pass = (Duration, usize);

/// What the SIGHUP cycles of one op gave.
struct During {
    samples: Vec<Duration>,
    passes: Vec<Pass>,
    /// Times the requests were paused for a second because the pass had not come (see `stall`).
    pauses: usize,
}

/// SIGHUP cycles measuring `kind` until `min` samples or `max_passes` passes. `stall`: when the
/// pass is not done that long after the SIGHUP, the requests pause once for a second (not
/// measured): a pass waits for the burst of kernel events that back-to-back writes keep going.
fn during_passes(
    conn: &mut Conn,
    status: &mut Conn,
    requests: &mut Requests,
    kind: Kind,
    pid: i32,
    (min, max_passes): (usize, usize),
    stall: Option<Duration>,
) -> Result<During, String> {
    let mut during = During {
        samples: Vec::new(),
        passes: Vec::new(),
        pauses: 0,
    };
    while during.samples.len() < min && during.passes.len() < max_passes {
        status.settle()?;
        let before = status.passes()?;
        let sent = Instant::now();
        hangup(pid)?;
        let mut last_poll = Instant::now();
        let mut in_pass = 0;
        let mut paused = false;
        loop {
            let (took, _) = conn
                .call(requests.next(kind))
                .map_err(|e| format!("{} during a pass: {e}", kind.name()))?;
            during.samples.push(took);
            in_pass += 1;
            if kind == Kind::Put || last_poll.elapsed() >= POLL {
                last_poll = Instant::now();
                if status.passes()? > before {
                    during.passes.push((sent.elapsed(), in_pass));
                    break;
                }
            }
            if !paused && stall.is_some_and(|after| sent.elapsed() > after) {
                paused = true;
                during.pauses += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            if sent.elapsed() > PASS_LIMIT {
                return Err(format!(
                    "the pass after SIGHUP to {pid} did not end within {} s",
                    PASS_LIMIT.as_secs()
                ));
            }
        }
    }
    Ok(during)
}

fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: latency SOCKET VXCD_PID [VXC_ID [MIN_SAMPLES [MAX_PASSES]]]";
    let socket = args.first().ok_or(usage)?;
    let pid: i32 = args
        .get(1)
        .and_then(|p| p.parse().ok())
        .filter(|&p| p > 0)
        .ok_or(usage)?;
    let id = args.get(2).map_or("v-1", String::as_str);
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(Ok(default), |v| v.parse().map_err(|_| usage.to_string()))
    };
    let min = number(3, 200)?;
    let max_passes = number(4, 3)?.max(1);

    let mut conn = Conn::open(socket)?;
    let mut status = Conn::open(socket)?;
    let mut requests = Requests::new(&mut conn, id)?;
    let (_, st) = status.call(r#"{"op":"status"}"#)?;
    let vxcs = st["vxcs"].as_u64().unwrap_or(0);
    let passes_at_start = status.passes()?;

    // The baseline: no pass running (tried again when one ran meanwhile).
    let mut idle = Vec::new();
    for attempt in 1..=3 {
        status.settle()?;
        let before = status.passes()?;
        idle.clear();
        for kind in [Kind::Get, Kind::Put] {
            let mut samples = Vec::with_capacity(min);
            for _ in 0..min {
                let (took, _) = conn
                    .call(requests.next(kind))
                    .map_err(|e| format!("{} (idle): {e}", kind.name()))?;
                samples.push(took);
            }
            idle.push(format!("{} {}", kind.name(), summary(&mut samples)));
        }
        if status.passes()? == before {
            break;
        }
        if attempt == 3 {
            idle.push("(a pass ran meanwhile, 3 times)".into());
        }
    }
    println!(
        "latency with {vxcs} VXCs, no pass running: {}",
        idle.join("; ")
    );

    let mut during = Vec::new();
    let mut pass_lines = Vec::new();
    let mut longest = Duration::ZERO;
    for kind in [Kind::Get, Kind::Put] {
        // The get cycles' passes say how long a pass takes; puts pause if theirs takes far longer.
        let stall = (kind == Kind::Put).then(|| longest * 3 + Duration::from_secs(2));
        let mut got = during_passes(
            &mut conn,
            &mut status,
            &mut requests,
            kind,
            pid,
            (min, max_passes),
            stall,
        )?;
        let pauses = match got.pauses {
            0 => String::new(),
            n => format!(", paused {n} times for 1 s to let a pass come"),
        };
        during.push(format!(
            "{} {}{pauses}",
            kind.name(),
            summary(&mut got.samples)
        ));
        for (took, n) in &got.passes {
            longest = longest.max(*took);
            pass_lines.push(format!("{:.2} s ({n} {})", took.as_secs_f64(), kind.name()));
        }
    }
    let ran = status.passes()? - passes_at_start;
    println!(
        "latency during a full reconcile of {vxcs} VXCs: {}",
        during.join("; ")
    );
    println!(
        "passes during the measurement: {ran} (SIGHUP cycles: {}); each, SIGHUP to done: {}",
        pass_lines.len(),
        pass_lines.join(", ")
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("latency: {e}");
        std::process::exit(1);
    }
}
