//! Building and parsing the netlink messages of vxcd's objects: links (VLAN and VXLAN), qdiscs
//! (TBF, ingress) and the pipe filter. Pure: no socket here.

use std::collections::{HashMap, HashSet};

use netlink_packet_core::{Nla, NlasIterator, ParseableParametrized};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, InfoData, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkHeader,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use std::net::IpAddr;

use super::tbf::{self, TbfParams};
use super::{
    ObservedLink, ObservedVxlan, PipeFilter, RootQdisc, TunnelSpec, PIPE_FILTER_PRIO,
    TBF_HANDLE_MAJOR,
};

pub(super) const TC_H_ROOT: u32 = 0xffff_ffff;

pub(super) const TC_H_INGRESS: u32 = 0xffff_fff1;

pub(super) const INGRESS_HANDLE: u32 = 0xffff_0000;

pub(super) const TBF_HANDLE: u32 = (TBF_HANDLE_MAJOR as u32) << 16;

pub(super) const ETH_P_ALL: u16 = 0x0003;

pub(super) const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

pub(super) const ENOENT: i32 = libc::ENOENT;

pub(super) const EINVAL: i32 = libc::EINVAL;

pub(super) const ENODEV: i32 = libc::ENODEV;

pub(super) const EEXIST: i32 = libc::EEXIST;

pub(super) fn tc_msg(
    index: u32,
    handle: u32,
    parent: u32,
    info: u32,
    attributes: Vec<TcAttribute>,
) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = TcHandle::from(handle);
    msg.header.parent = TcHandle::from(parent);
    msg.header.info = info;
    msg.attributes = attributes;
    msg
}

pub(super) fn filter_info() -> u32 {
    (u32::from(PIPE_FILTER_PRIO) << 16) | u32::from(ETH_P_ALL.to_be())
}

pub(super) fn tbf_attrs(params: &TbfParams) -> Vec<TcAttribute> {
    vec![
        TcAttribute::Kind("tbf".into()),
        TcAttribute::Options(
            tbf::encode_options(params)
                .into_iter()
                .map(TcOption::Other)
                .collect(),
        ),
    ]
}

pub(super) fn pipe_filter_attrs(target: u32) -> Vec<TcAttribute> {
    match_all_redirect_attrs(target, TcMirrorActionType::EgressRedir)
}

/// A `u32` filter matching every frame, with a `mirred` redirect of it to `target`: to its
/// egress (the pipe between two VXC ends) or its ingress (the inspector's probe tap).
pub(crate) fn match_all_redirect_attrs(
    target: u32,
    redirect: TcMirrorActionType,
) -> Vec<TcAttribute> {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut mirred = TcMirror::default();
    mirred.generic = TcActionGeneric::default();
    mirred.generic.action = TcActionType::Stolen;
    mirred.eaction = redirect;
    mirred.ifindex = target;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];
    vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ]
}

pub(super) fn link_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

pub(super) fn flags_msg(index: u32, up: bool, promisc: bool) -> LinkMessage {
    let mut msg = link_msg(index);
    msg.header.change_mask = LinkFlags::Up | LinkFlags::Promisc;
    let mut flags = LinkFlags::empty();
    if up {
        flags |= LinkFlags::Up;
    }
    if promisc {
        flags |= LinkFlags::Promisc;
    }
    msg.header.flags = flags;
    msg
}

pub(super) fn parse_link(msg: LinkMessage) -> Option<ObservedLink> {
    let mut link = bare_link(&msg.header);
    for attr in msg.attributes {
        note_link_attribute(&mut link, attr);
    }
    (!link.name.is_empty()).then_some(link)
}

/// What an acknowledged `RTM_SETLINK` made of `link`: the flags its change mask names, and its
/// MTU, group, alias (an empty one clears it) and IPv6 address generation mode.
pub(super) fn amend_link(link: &mut ObservedLink, msg: &LinkMessage) {
    for (flag, field) in [
        (LinkFlags::Up, &mut link.up),
        (LinkFlags::Promisc, &mut link.promisc),
    ] {
        if msg.header.change_mask.contains(flag) {
            *field = msg.header.flags.contains(flag);
        }
    }
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfAlias(a) if a.is_empty() => link.alias = None,
            LinkAttribute::Mtu(_)
            | LinkAttribute::Group(_)
            | LinkAttribute::IfAlias(_)
            | LinkAttribute::AfSpecUnspec(_) => note_link_attribute(link, attr.clone()),
            _ => {}
        }
    }
}

/// [`parse_link`] from the bytes of an `RTM_NEWLINK`/`RTM_DELLINK` message after its netlink
/// header, parsing only the attributes vxcd keeps: a notification carries the link's counters
/// and its IPv4 and IPv6 settings and counters, most of its 1.4 KB, and each of vxcd's creations
/// raises several of them. The IPv6 address generation mode is picked out of `IFLA_AF_SPEC`
/// without parsing the rest of it. `None` for a message that cannot be read or has no name.
pub(super) fn link_from_payload(payload: &[u8]) -> Option<ObservedLink> {
    const IFLA_IFNAME: u16 = 3;
    const IFLA_MTU: u16 = 4;
    const IFLA_LINK: u16 = 5;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_IFALIAS: u16 = 20;
    const IFLA_AF_SPEC: u16 = 26;
    const IFLA_GROUP: u16 = 27;
    const AF_INET6: u16 = 10;
    const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
    let header = LinkHeader::parse(payload).ok()?;
    let mut link = bare_link(&header);
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..)?) {
        let nla = nla.ok()?;
        match nla.kind() {
            IFLA_IFNAME | IFLA_MTU | IFLA_LINK | IFLA_LINKINFO | IFLA_IFALIAS | IFLA_GROUP => {
                let attr = LinkAttribute::parse_with_param(&nla, header.interface_family).ok()?;
                note_link_attribute(&mut link, attr);
            }
            IFLA_AF_SPEC => {
                for family in NlasIterator::new(nla.value()) {
                    let family = family.ok()?;
                    if family.kind() != AF_INET6 {
                        continue;
                    }
                    for a in NlasIterator::new(family.value()) {
                        let a = a.ok()?;
                        if a.kind() == IFLA_INET6_ADDR_GEN_MODE {
                            link.addr_gen_mode = a.value().first().copied();
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// The length of `struct ifinfomsg`, after which a link message's attributes begin.
const LINK_HEADER_LEN: usize = 16;

fn bare_link(header: &LinkHeader) -> ObservedLink {
    ObservedLink {
        index: header.index,
        name: String::new(),
        parent: None,
        kind: None,
        vlan_id: None,
        mtu: 0,
        up: header.flags.contains(LinkFlags::Up),
        promisc: header.flags.contains(LinkFlags::Promisc),
        group: 0,
        alias: None,
        addr_gen_mode: None,
        vxlan: None,
    }
}

fn note_link_attribute(link: &mut ObservedLink, attr: LinkAttribute) {
    match attr {
        LinkAttribute::IfName(n) => link.name = n,
        LinkAttribute::Link(p) => link.parent = Some(p),
        LinkAttribute::Mtu(m) => link.mtu = m,
        LinkAttribute::Group(g) => link.group = g,
        LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
        LinkAttribute::LinkInfo(infos) => {
            for info in infos {
                match info {
                    LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                    LinkInfo::Data(InfoData::Vlan(v)) => {
                        link.vlan_id = v.iter().find_map(|x| match x {
                            InfoVlan::Id(id) => Some(*id),
                            _ => None,
                        })
                    }
                    LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(&v)),
                    _ => {}
                }
            }
        }
        LinkAttribute::AfSpecUnspec(specs) => {
            for spec in specs {
                if let AfSpecUnspec::Inet6(inet6) = spec {
                    for a in inet6 {
                        if let AfSpecInet6::AddrGenMode(m) = a {
                            link.addr_gen_mode = Some(u8::from(&m));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

pub(super) fn parse_vxlan(attrs: &[InfoVxlan]) -> ObservedVxlan {
    let mut out = ObservedVxlan::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => out.vni = Some(*id),
            InfoVxlan::Local(ip) => out.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => out.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Group(ip) => out.remote = Some(IpAddr::V4(*ip)),
            InfoVxlan::Group6(ip) => out.remote = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(p) => out.udp_port = Some(*p),
            InfoVxlan::Learning(l) => out.learning = Some(*l),
            InfoVxlan::Link(l) if *l != 0 => out.link = Some(*l),
            _ => {}
        }
    }
    out
}

/// The `IFLA_INFO_DATA` of vxcd's VXLAN device for a tunnel.
pub(super) fn vxlan_attrs(t: &TunnelSpec, uplink: Option<u32>) -> Vec<InfoVxlan> {
    let mut attrs = vec![InfoVxlan::Id(t.vni)];
    attrs.push(match t.local {
        IpAddr::V4(ip) => InfoVxlan::Local(ip),
        IpAddr::V6(ip) => InfoVxlan::Local6(ip),
    });
    attrs.push(match t.remote {
        IpAddr::V4(ip) => InfoVxlan::Group(ip),
        IpAddr::V6(ip) => InfoVxlan::Group6(ip),
    });
    attrs.extend([
        InfoVxlan::Port(t.udp_port),
        InfoVxlan::Learning(false),
        InfoVxlan::Proxy(false),
        InfoVxlan::L2Miss(false),
        InfoVxlan::L3Miss(false),
    ]);
    if let Some(link) = uplink {
        attrs.push(InfoVxlan::Link(link));
    }
    attrs
}

/// Raw bytes of TCA_OPTIONS of a kind netlink-packet-route does not know (parsed as one
/// `DefaultNla` holding the whole nest).
pub(super) fn raw_options(attrs: &[TcAttribute]) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Other(nla) => {
                let mut buf = vec![0u8; nla.value_len()];
                nla.emit_value(&mut buf);
                Some(buf)
            }
            _ => None,
        }),
        _ => None,
    })
}

pub(super) fn kind_of(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

pub(super) fn parse_pipe_filter(handle: u32, attrs: &[TcAttribute]) -> PipeFilter {
    let mut filter = PipeFilter {
        handle,
        kind: kind_of(attrs),
        redirect_to: None,
        match_all: false,
    };
    for attr in attrs {
        let TcAttribute::Options(opts) = attr else {
            continue;
        };
        for opt in opts {
            match opt {
                TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                    filter.match_all = sel.flags.contains(TcU32SelectorFlags::Terminal)
                        && !sel.keys.is_empty()
                        && sel.keys.iter().all(|k| k.mask == 0);
                }
                TcOption::U32(TcFilterU32Option::Action(actions)) => {
                    for action in actions {
                        for a in &action.attributes {
                            let TcActionAttribute::Options(aopts) = a else {
                                continue;
                            };
                            for ao in aopts {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = ao {
                                    if m.eaction == TcMirrorActionType::EgressRedir
                                        && m.generic.action == TcActionType::Stolen
                                    {
                                        filter.redirect_to = Some(m.ifindex);
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    filter
}

/// What vxcd keeps of a qdisc: the root qdisc of a link, or the fact that it has an ingress
/// qdisc; other qdiscs (children of a root, clsact) are not kept.
pub(super) enum QdiscSeen {
    Root(u32, RootQdisc),
    Ingress(u32),
}

impl QdiscSeen {
    pub(super) fn of(q: TcMessage) -> Option<Self> {
        let index = q.header.index as u32;
        let parent = u32::from(q.header.parent);
        let kind = kind_of(&q.attributes);
        if parent == TC_H_ROOT {
            let tbf = if kind == "tbf" {
                raw_options(&q.attributes).and_then(|o| tbf::decode_options(&o))
            } else {
                None
            };
            Some(Self::Root(
                index,
                RootQdisc {
                    handle: u32::from(q.header.handle),
                    kind,
                    tbf,
                },
            ))
        } else if parent == TC_H_INGRESS && kind == "ingress" {
            Some(Self::Ingress(index))
        } else {
            None
        }
    }

    pub(super) fn note(
        self,
        root_qdiscs: &mut HashMap<u32, RootQdisc>,
        ingress: &mut HashSet<u32>,
    ) {
        match self {
            Self::Root(index, root) => {
                root_qdiscs.insert(index, root);
            }
            Self::Ingress(index) => {
                ingress.insert(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::{
        AfSpecInet, In6AddrGenMode, Inet6DevConf, Inet6Stats, InetDevConf, InfoKind, State, Stats64,
    };

    fn bytes(msg: &LinkMessage) -> Vec<u8> {
        let mut out = vec![0; msg.buffer_len()];
        msg.emit(&mut out);
        out
    }

    /// A link as the kernel notifies it: counters, both families' settings and counters, and
    /// attributes vxcd does not read among those it does.
    fn notified(attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = 42;
        msg.header.flags = LinkFlags::Up | LinkFlags::Promisc | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::OperState(State::Up),
            LinkAttribute::Stats64(Stats64::default()),
            LinkAttribute::AfSpecUnspec(vec![
                AfSpecUnspec::Inet(vec![AfSpecInet::DevConf(InetDevConf::default())]),
                AfSpecUnspec::Inet6(vec![
                    AfSpecInet6::DevConf(Inet6DevConf::default()),
                    AfSpecInet6::Stats(Inet6Stats::default()),
                    AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
                ]),
            ]),
            LinkAttribute::Carrier(1),
        ];
        msg.attributes.extend(attrs);
        msg
    }

    #[test]
    fn a_link_read_from_its_bytes_is_the_link_parsed_whole() {
        let vlan = notified(vec![
            LinkAttribute::IfName("cust0.200".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Link(7),
            LinkAttribute::Group(30819),
            LinkAttribute::IfAlias("vxcd:v-17:a".into()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(200)])),
            ]),
        ]);
        let tunnel = notified(vec![
            LinkAttribute::IfName("vxc1001".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Group(30819),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(1001),
                    InfoVxlan::Port(4789),
                    InfoVxlan::Learning(false),
                    InfoVxlan::Link(3),
                ])),
            ]),
        ]);
        let mut port = notified(vec![
            LinkAttribute::IfName("cust0".into()),
            LinkAttribute::Mtu(9000),
            // An empty alias is no alias, as parsed whole.
            LinkAttribute::IfAlias(String::new()),
        ]);
        port.header.flags = LinkFlags::Broadcast;
        for msg in [vlan, tunnel, port] {
            let whole = parse_link(msg.clone());
            assert!(whole.is_some());
            assert_eq!(link_from_payload(&bytes(&msg)), whole, "{msg:?}");
        }
        let read = link_from_payload(&bytes(&notified(vec![LinkAttribute::IfName("x".into())])));
        assert_eq!(read.and_then(|l| l.addr_gen_mode), Some(1));
    }

    #[test]
    fn an_acknowledged_setlink_changes_only_what_it_names() {
        let mut known = parse_link(notified(vec![
            LinkAttribute::IfName("cust0.200".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Group(7),
            LinkAttribute::IfAlias("old".into()),
        ]))
        .unwrap();
        let before = known.clone();
        amend_link(&mut known, &link_msg(42));
        assert_eq!(known, before, "an empty SETLINK changes nothing");
        amend_link(&mut known, &flags_msg(42, true, false));
        assert!(known.up && !known.promisc);
        let mut msg = link_msg(42);
        msg.attributes = vec![
            LinkAttribute::Mtu(9000),
            LinkAttribute::Group(30819),
            LinkAttribute::IfAlias(String::new()),
        ];
        amend_link(&mut known, &msg);
        assert_eq!(
            (known.mtu, known.group, known.alias.as_deref()),
            (9000, 30819, None)
        );
        msg.attributes = vec![
            LinkAttribute::IfAlias("vxcd:v-1:a".into()),
            LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
                In6AddrGenMode::Eui64,
            )])]),
        ];
        amend_link(&mut known, &msg);
        assert_eq!(known.alias.as_deref(), Some("vxcd:v-1:a"));
        assert_eq!(known.addr_gen_mode, Some(0));
        assert_eq!((known.name.as_str(), known.index), ("cust0.200", 42));
    }

    #[test]
    fn a_link_message_without_a_name_or_cut_short_is_no_link() {
        assert_eq!(link_from_payload(&bytes(&notified(vec![]))), None);
        let whole = bytes(&notified(vec![LinkAttribute::IfName("cust0.200".into())]));
        assert_eq!(link_from_payload(&whole[..10]), None, "inside the header");
        assert_eq!(
            link_from_payload(&whole[..whole.len() - 3]),
            None,
            "inside the name"
        );
    }
}
