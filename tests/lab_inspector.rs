//! Lab scenarios of the inspector (802.1Q kernel): passive counting of a tagged VXC built by
//! vxcd's real dataplane, and probe verification of its tags.
//!
//! The verification scenario needs the `tun` module in the guest (the probe injector is a
//! tap): `"tun"` must be in `MODULES` of tests/lab/vm.rs. Without it the scenario fails with
//! "opening /dev/net/tun ...: No such file or directory". With it, both scenarios passed
//! (Debian cloud kernel 6.1.0-56, TCG).

mod lab;

use std::os::fd::AsRawFd;
use std::time::Duration;

use lab::net::{Netns, Topology};
use vxcd::dataplane::{Dataplane, DataplaneConfig, EndSpec, VxcSpec};
use vxcd::inspector::{
    verify, Expectation, InspectConfig, InspectView, Inspector, VerifyConfig, VerifySpec,
    ViolationKind,
};

/// Runs `f` on a thread inside `ns`.
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns on an open namespace fd; changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// customer VLAN 200 on edge cust0 <-> provider VLAN 300 on edge prov0.
fn tagged_vxc() -> VxcSpec {
    VxcSpec {
        id: "vxc-lab".into(),
        rate_mbps: 100,
        a: EndSpec {
            port: "port-cust".into(),
            interface: "cust0".into(),
            vlan: Some(200),
        },
        b: EndSpec {
            port: "port-prov".into(),
            interface: "prov0".into(),
            vlan: Some(300),
        },
    }
}

fn ports() -> Vec<(String, String)> {
    vec![
        ("port-cust".into(), "cust0".into()),
        ("port-prov".into(), "prov0".into()),
    ]
}

fn apply(edge: &Netns, spec: &VxcSpec) {
    let spec = spec.clone();
    in_ns(edge, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                Dataplane::connect(DataplaneConfig::default())
                    .await
                    .expect("connect")
                    .apply(&spec)
                    .await
                    .expect("apply tagged VXC")
            })
    });
}

fn end(view: &InspectView, port: &str) -> (u64, u64) {
    let p = view.ports.iter().find(|p| p.port == port).expect("port");
    (p.ends[0].rx_frames, p.ends[0].tx_frames)
}

lab::lab_tests! {
    /// Pings across a tagged VXC: the inspector counts them on the A-End (VLAN 200 on cust0)
    /// and B-End (VLAN 300 on prov0) in both directions with no violation; frames on VLAN 201
    /// from the customer are an unknown-VLAN violation received on cust0.
    fn inspector_counts_a_tagged_vxc_and_flags_an_unknown_vlan() {
        let topo = Topology::new();
        topo.customer.add_vlan("eth0", 200, "10.2.0.1/24");
        topo.provider.add_vlan("eth0", 300, "10.2.0.2/24");
        let spec = tagged_vxc();
        apply(&topo.edge, &spec);
        let exp = Expectation::from_vxcs(&ports(), std::slice::from_ref(&spec));
        let inspector = in_ns(&topo.edge, move || {
            Inspector::start(InspectConfig::default(), exp).expect("inspector")
        });
        topo.customer.assert_ping("10.2.0.2", 3);
        let mut view = inspector.snapshot();
        lab::proc::wait_until(Duration::from_secs(10), "inspector counts", || {
            view = inspector.snapshot();
            let (a_rx, a_tx) = end(&view, "port-cust");
            let (b_rx, b_tx) = end(&view, "port-prov");
            a_rx >= 3 && a_tx >= 3 && b_rx >= 3 && b_tx >= 3
        });
        let json = serde_json::to_string_pretty(&view).expect("json");
        assert!(view.ports.iter().all(|p| p.violations.is_empty()), "{json}");

        topo.customer.add_vlan("eth0", 201, "10.2.1.1/24");
        let _ = topo.customer.ping("10.2.1.2", 1); // nobody answers: ARP on VLAN 201 is enough
        lab::proc::wait_until(Duration::from_secs(10), "unknown VLAN 201 on cust0", || {
            view = inspector.snapshot();
            view.ports.iter().any(|p| {
                p.port == "port-cust"
                    && p.violations.iter().any(|v| {
                        v.kind == ViolationKind::UnknownVlan
                            && v.vlan == Some(201)
                            && v.direction == vxcd::inspector::Direction::Rx
                    })
            })
        });
        inspector.stop();
    }

    /// Probes into each end leave the other end's port with exactly its tag; a VXC recorded
    /// with the wrong B-End VLAN fails naming the VLAN observed.
    fn verify_proves_the_tags_of_a_tagged_vxc() {
        let topo = Topology::new();
        let spec = tagged_vxc();
        apply(&topo.edge, &spec);
        let vspec = VerifySpec::from_vxc(&spec, &ports());
        let result = in_ns(&topo.edge, move || verify(&vspec, VerifyConfig::default()));
        let result = result.unwrap_or_else(|e| panic!("verify could not run: {e}"));
        let json = serde_json::to_string_pretty(&result).expect("json");
        assert!(result.pass, "{json}");
        assert_eq!(result.directions[0].observed_tag.map(|t| (t.tpid, t.vid)), Some((0x8100, 300)), "{json}");
        assert_eq!(result.directions[1].observed_tag.map(|t| (t.tpid, t.vid)), Some((0x8100, 200)), "{json}");

        let mut wrong = VerifySpec::from_vxc(&spec, &ports());
        wrong.b.vlan = Some(301);
        let result = in_ns(&topo.edge, move || verify(&wrong, VerifyConfig::default()));
        let result = result.unwrap_or_else(|e| panic!("verify could not run: {e}"));
        let json = serde_json::to_string_pretty(&result).expect("json");
        assert!(!result.pass, "{json}");
        assert!(result.directions[0].detail.contains("VLAN 300 (TPID 0x8100) instead of VLAN 301"), "{json}");
    }
}
