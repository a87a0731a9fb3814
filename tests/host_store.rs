//! Host tier: what the daemon acknowledged survives restarts and kill -9 across many compaction
//! points (a small `state.compact_every`), and a full disk loses nothing and heals. Keys, their
//! deactivations and VXCs: the VXCs' ports have no interface here, so they are stored `pending`,
//! which exercises exactly the same records as live ones (the lab covers the kernel side).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{ok, Daemon};
use common::Netns;
use serde_json::{json, Value};

const COMPACT_EVERY: usize = 7;

fn key_put(id: &str, active: bool) -> Value {
    json!({"op": "key.put", "key": {"key": id, "port": "mel-2", "single_use": false,
        "max_speed_mbps": 500, "active": active}})
}

fn vxc_put(id: &str, key: &str) -> Value {
    json!({"op": "vxc.put", "vxc": {"id": id, "name": format!("vxc {id}"), "service_key": key,
        "rate_mbps": 100, "a_end": {"port": "mel-1"}}})
}

fn start(ns: &Netns) -> Daemon {
    Daemon::start(
        ns,
        &[("mel-1", "nope1"), ("mel-2", "nope2")],
        &format!("compact_every = {COMPACT_EVERY}\n"),
    )
}

/// What the daemon holds: key id -> active, and the VXC ids.
fn holdings(d: &Daemon) -> (BTreeMap<String, bool>, BTreeSet<String>) {
    let keys = ok(d.call(json!({"op": "key.list"})))["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["key"].as_str().expect("key id").to_owned(),
                k["active"].as_bool().expect("active"),
            )
        })
        .collect();
    let vxcs = ok(d.call(json!({"op": "vxc.list"})))["vxcs"]
        .as_array()
        .expect("vxcs")
        .iter()
        .map(|v| v["id"].as_str().expect("vxc id").to_owned())
        .collect();
    (keys, vxcs)
}

/// One change of a scripted sequence, and what it does to the expected holdings.
enum Step {
    Key(String, bool),
    Vxc(String, String),
    VxcDelete(String),
}

impl Step {
    fn request(&self) -> Value {
        match self {
            Step::Key(id, active) => key_put(id, *active),
            Step::Vxc(id, key) => vxc_put(id, key),
            Step::VxcDelete(id) => json!({"op": "vxc.delete", "id": id}),
        }
    }

    fn apply(&self, keys: &mut BTreeMap<String, bool>, vxcs: &mut BTreeSet<String>) {
        match self {
            Step::Key(id, active) => {
                keys.insert(id.clone(), *active);
            }
            Step::Vxc(id, _) => {
                vxcs.insert(id.clone());
            }
            Step::VxcDelete(id) => {
                vxcs.remove(id);
            }
        }
    }
}

/// Keys created, some deactivated (and one reactivated), VXCs created and some deleted: every
/// kind of record, in an order that puts each kind at a compaction point sooner or later.
fn script(round: usize, n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 0..n {
        let key = format!("k{round}-{i}");
        steps.push(Step::Key(key.clone(), true));
        steps.push(Step::Vxc(format!("v{round}-{i}"), key.clone()));
        if i % 3 == 1 {
            steps.push(Step::Key(key.clone(), false));
        }
        if i % 4 == 2 {
            steps.push(Step::VxcDelete(format!("v{round}-{i}")));
        }
        if i % 6 == 4 {
            steps.push(Step::Key(format!("k{round}-{}", i - 3), true));
        }
    }
    steps
}

#[test]
fn every_acknowledged_change_survives_restarts_across_compactions() {
    let ns = Netns::new("st");
    let mut d = start(&ns);
    let (mut keys, mut vxcs) = (BTreeMap::new(), BTreeSet::new());
    for round in 0..3 {
        let steps = script(round, 12);
        assert!(
            steps.len() > 2 * COMPACT_EVERY,
            "crosses two compaction points"
        );
        let mut c = d.client();
        for step in &steps {
            ok(c.call(step.request()));
            step.apply(&mut keys, &mut vxcs);
        }
        assert!(
            d.dir.path().join("state/snapshot.json").exists(),
            "no compaction happened"
        );
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
        d.restart();
        let (got_keys, got_vxcs) = holdings(&d);
        assert_eq!(got_keys, keys, "keys after restart {round}");
        assert_eq!(got_vxcs, vxcs, "VXCs after restart {round}");
    }
}

#[test]
fn kill_9_across_compactions_loses_nothing_acknowledged() {
    let ns = Netns::new("sk");
    let mut d = start(&ns);
    let (mut keys, mut vxcs) = (BTreeMap::new(), BTreeSet::new());
    for round in 0..4 {
        let steps = script(round, 40);
        let socket = d.socket.clone();
        let requests: Vec<Value> = steps.iter().map(Step::request).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        // Pipelined: every request written at once, answers read as they come.
        let writer = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            let mut all = String::new();
            for r in &requests {
                all.push_str(&format!("{r}\n"));
            }
            stream
                .write_all(all.as_bytes())
                .expect("pipelining the requests");
            let mut acked = 0;
            // Answers until the kill ends the connection (EOF or a reset).
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let answer: Value = serde_json::from_str(&line).expect("an answer is JSON");
                if answer["ok"] != json!(true) {
                    break;
                }
                acked += 1;
                if acked == 3 * COMPACT_EVERY {
                    let _ = tx.send(());
                }
            }
            acked
        });
        rx.recv()
            .expect("enough acknowledged changes before the kill");
        d.kill9();
        let acked = writer.join().expect("writer thread");
        d.restart();
        let (got_keys, got_vxcs) = holdings(&d);
        let (mut want_keys, mut want_vxcs) = (keys.clone(), vxcs.clone());
        for step in &steps[..acked] {
            step.apply(&mut want_keys, &mut want_vxcs);
        }
        // Every acknowledged change is there. Beyond them, the writes in flight at the kill (one
        // group commit: pipelined writes are made durable together, and answered only after)
        // may have landed unacknowledged, but only as a prefix of what was sent, never a gap.
        let mut landed = (want_keys.clone(), want_vxcs.clone());
        let mut matches = landed == (got_keys.clone(), got_vxcs.clone());
        for step in &steps[acked..] {
            if matches {
                break;
            }
            step.apply(&mut landed.0, &mut landed.1);
            matches = landed == (got_keys.clone(), got_vxcs.clone());
        }
        assert!(
            matches,
            "round {round}: {acked} acknowledged; state after kill -9 is no prefix of what was sent that holds them all:\nkeys {got_keys:?}\nwant {want_keys:?}\nvxcs {got_vxcs:?}\nwant {want_vxcs:?}"
        );
        (keys, vxcs) = (got_keys, got_vxcs);
    }
}

/// A tmpfs mounted on the daemon's state directory, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs on {}", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` with `filler` until a write fails.
fn fill(filler: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).expect("filler");
    let block = vec![0u8; 4096];
    while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
}

fn store_status(d: &Daemon) -> Value {
    ok(d.call(json!({"op": "status"})))["store"].clone()
}

#[test]
fn a_full_disk_refuses_changes_loses_nothing_and_heals() {
    let ns = Netns::new("sf");
    // The daemon's state directory is <its dir>/state; the mount must exist before it starts, so
    // start once to learn the dir, stop, mount there, start again.
    let mut d = start(&ns);
    assert_eq!(d.terminate(), Some(0));
    let state_dir = d.dir.path().join("state");
    std::fs::remove_dir_all(&state_dir).expect("clearing the first state");
    let _mount = Tmpfs::mount(&state_dir, "512k");
    d.restart();
    let mut acked = BTreeMap::new();
    for i in 0..10 {
        let id = format!("full-{i}");
        ok(d.call(key_put(&id, true)));
        acked.insert(id, true);
    }
    assert_eq!(store_status(&d)["ok"], json!(true));

    let filler = state_dir.join("filler");
    fill(&filler);
    // The journal's last page may still take an entry or two; after the first refusal every
    // change is refused with `internal` and none is stored, whatever compaction tries.
    let mut refused = 0;
    for i in 0..100 {
        let id = format!("late-{i}");
        let answer = d.call(key_put(&id, true));
        if answer["ok"] == json!(true) {
            assert_eq!(refused, 0, "a change accepted after a refusal: {answer}");
            acked.insert(id, true);
            continue;
        }
        assert_eq!(answer["error"]["code"], json!("internal"), "{answer}");
        refused += 1;
        if refused == 2 * COMPACT_EVERY {
            break;
        }
    }
    assert_eq!(
        refused,
        2 * COMPACT_EVERY,
        "the full disk never refused a change"
    );
    let status = store_status(&d);
    assert_eq!(status["ok"], json!(false), "{status}");
    assert!(
        status["error"].as_str().unwrap_or("").contains("No space"),
        "{status}"
    );
    assert!(!state_dir.join("snapshot.json.tmp").exists());

    // Space is back: the store says so by itself, takes changes and compacts again.
    std::fs::remove_file(&filler).expect("removing the filler");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store_status(&d)["ok"] != json!(true) {
        assert!(Instant::now() < deadline, "store never healed: {}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..(3 * COMPACT_EVERY) {
        let id = format!("back-{i}");
        ok(d.call(key_put(&id, i % 2 == 0)));
        acked.insert(id, i % 2 == 0);
    }
    assert!(!state_dir.join("snapshot.json.tmp").exists());
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    d.restart();
    let (keys, _) = holdings(&d);
    assert_eq!(keys, acked);
    drop(d);
}

#[test]
fn writes_from_several_connections_share_durable_writes_and_survive_kill_9() {
    const CONNECTIONS: usize = 4;
    const EACH: usize = 200;
    let ns = Netns::new("sg");
    let mut d = Daemon::start(
        &ns,
        &[("mel-1", "nope1"), ("mel-2", "nope2")],
        "compact_every = 100000\n",
    );
    ok(d.call(key_put("m", true)));
    // One line of the journal per durable write (entry), however many records it holds.
    let journal = d.dir.path().join("state/journal.log");
    let entries = || {
        std::fs::read_to_string(&journal)
            .expect("reading the journal")
            .lines()
            .count()
    };
    let base = entries();
    let (tx, rx) = std::sync::mpsc::channel();
    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let socket = d.socket.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
                let mut all = String::new();
                for i in 0..EACH {
                    all.push_str(&format!("{}\n", vxc_put(&format!("c{c}-{i}"), "m")));
                }
                stream.write_all(all.as_bytes()).expect("pipelining");
                let mut acked = Vec::new();
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let answer: Value = serde_json::from_str(&line).expect("an answer is JSON");
                    if answer["ok"] != json!(true) {
                        break;
                    }
                    acked.push(
                        answer["result"]["vxc"]["id"]
                            .as_str()
                            .expect("id")
                            .to_owned(),
                    );
                    let _ = tx.send(());
                }
                acked
            })
        })
        .collect();
    // Killed in the middle: once half of all the writes are acknowledged.
    for _ in 0..CONNECTIONS * EACH / 2 {
        rx.recv().expect("an acknowledgement");
    }
    d.kill9();
    let acked: Vec<Vec<String>> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    d.restart();
    let (_, vxcs) = holdings(&d);
    for (c, ids) in acked.iter().enumerate() {
        for id in ids {
            assert!(vxcs.contains(id), "{id} was acknowledged and is gone");
        }
        // Beyond the acknowledged, only a prefix of what the connection sent, never a gap.
        let landed = (0..EACH)
            .take_while(|i| vxcs.contains(&format!("c{c}-{i}")))
            .count();
        assert!(landed >= ids.len());
        assert!(
            (landed..EACH).all(|i| !vxcs.contains(&format!("c{c}-{i}"))),
            "connection {c}: a gap after {landed}: {vxcs:?}"
        );
    }
    // Group commit: fewer durable writes (journal entries) than writes made durable.
    let entries = entries() - base;
    eprintln!(
        "{} writes sent on {CONNECTIONS} connections, {} acknowledged before the kill -9, {} \
         in the state after it, in {entries} journal entries",
        CONNECTIONS * EACH,
        acked.iter().map(Vec::len).sum::<usize>(),
        vxcs.len()
    );
    assert!(
        entries < vxcs.len(),
        "{entries} journal entries for {} VXCs: no write shared a sync\n{}",
        vxcs.len(),
        d.log()
    );
}
