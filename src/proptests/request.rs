//! `protocol::parse_request`.

use proptest::prelude::*;
use serde_json::json;

use crate::protocol::{parse_request, Op};

const CODES: &[&str] = &["bad_request", "unknown_op"];

proptest! {
    /// Any bytes: a request, or one of the parser's own failure codes.
    #[test]
    fn any_bytes_give_a_request_or_a_typed_failure(line in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err((_, failure)) = parse_request(&line) {
            prop_assert!(CODES.contains(&failure.code), "{}", failure.code);
        }
    }

    /// JSON objects with an op and random fields never panic and keep the echoed id.
    #[test]
    fn random_objects_echo_their_id(
        op in prop::sample::select(vec!["hello", "key.get", "key.put", "vxc.put", "vxc.get", "verify", "nope"]),
        id in any::<i64>(),
        field in "[a-z_]{1,12}",
        value in any::<i64>(),
    ) {
        let line = json!({"id": id, "op": op, field: value}).to_string();
        match parse_request(line.as_bytes()) {
            Ok(req) if !matches!(req.op, Op::VxcGet { .. } | Op::Verify { .. }) => prop_assert_eq!(req.id, json!(id)),
            Ok(_) => {}
            Err((echoed, failure)) => {
                prop_assert!(CODES.contains(&failure.code));
                if op != "vxc.get" && op != "verify" {
                    prop_assert_eq!(echoed, json!(id));
                }
            }
        }
    }

    /// Any request id is echoed exactly, floats included (serde_json's `float_roundtrip`: without
    /// it 1.2895780495127825e84 came back as ...823e84).
    #[test]
    fn a_float_id_is_echoed_exactly(id in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let line = format!(r#"{{"id": {}, "op": "hello"}}"#, serde_json::to_string(&id).expect("id"));
        let req = parse_request(line.as_bytes()).map_err(|(_, f)| TestCaseError::fail(f.message))?;
        prop_assert_eq!(req.id.as_f64(), Some(id));
    }

    /// A key.put built from random valid values parses back to exactly those values.
    #[test]
    fn valid_key_puts_round_trip(
        key in "[A-Za-z0-9-]{1,64}",
        port in "[a-z0-9-]{1,16}",
        description in "\\PC{0,40}",
        max in 1i64..=u32::MAX as i64,
        vlan in proptest::option::of(2i64..=4093),
        active in any::<bool>(),
    ) {
        let line = json!({"op": "key.put", "key": {"key": key, "port": port, "description": description,
            "single_use": vlan.is_some(), "max_speed_mbps": max, "vlan": vlan, "active": active}}).to_string();
        let Op::KeyPut { key: req } = parse_request(line.as_bytes()).map_err(|(_, f)| TestCaseError::fail(f.message))?.op else {
            return Err(TestCaseError::fail("not a key.put"));
        };
        prop_assert_eq!(&req.key, &key);
        prop_assert_eq!(&req.port, &port);
        prop_assert_eq!(&req.description, &description);
        prop_assert_eq!((req.max_speed_mbps, req.vlan, req.active), (max, vlan, active));
    }
}
