use super::*;
use crate::dataplane::DataplaneConfig;

fn link(
    index: u32,
    name: &str,
    parent: Option<u32>,
    vlan: Option<u16>,
    group: u32,
) -> ObservedLink {
    ObservedLink {
        index,
        name: name.into(),
        parent,
        kind: Some(if vlan.is_some() { "vlan" } else { "veth" }.into()),
        vlan_id: vlan,
        mtu: 1500,
        up: true,
        promisc: false,
        group,
        alias: None,
        addr_gen_mode: None,
        vxlan: None,
    }
}

/// A crash between creating a subinterface and marking it leaves it in the owner group
/// without alias; no VXC wants it, so it is an orphan. Owner-group links vxcd would not have
/// named that way are not vxcd's.
#[test]
fn half_made_subinterface_of_no_vxc_is_an_orphan() {
    let cfg = DataplaneConfig::default();
    let group = cfg.owner_group;
    let links = vec![
        link(2, "eth1", None, None, 0),
        link(3, "eth1.3999", Some(2), Some(3999), group),
        link(4, "mine.3998", Some(2), Some(3998), group),
        link(5, "eth1.3997", Some(2), Some(3997), 0),
    ];
    let obs = Observed::new(
        cfg,
        links,
        Default::default(),
        Default::default(),
        Default::default(),
    );
    let plan = plan(&[], &obs);
    let names: Vec<String> = plan.orphans.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        names,
        ["link eth1.3999 (half-made: owner group, no alias yet)"],
        "{plan:?}"
    );
}

/// A crash between moving links into the doomed group and deleting the group leaves links
/// that are still vxcd's by their alias: orphans. A link in that group without vxcd's alias
/// is someone else's.
#[test]
fn links_left_in_the_doomed_group_are_orphans_and_foreign_ones_are_not() {
    let cfg = DataplaneConfig::default();
    let doomed = crate::dataplane::doomed_group(cfg.owner_group);
    let mut ours = link(3, "eth1.300", Some(2), Some(300), doomed);
    ours.alias = Some("vxcd:v-1:a".into());
    let theirs = link(4, "eth1.301", Some(2), Some(301), doomed);
    let links = vec![link(2, "eth1", None, None, 0), ours, theirs];
    let obs = Observed::new(
        cfg,
        links,
        Default::default(),
        Default::default(),
        Default::default(),
    );
    let plan = plan(&[], &obs);
    let names: Vec<String> = plan.orphans.iter().map(|o| o.to_string()).collect();
    assert_eq!(names, ["link eth1.300 (vxcd:v-1:a)"], "{plan:?}");
}
