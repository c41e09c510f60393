//! Properties of the standalone agent's incremental state: whatever the order
//! in which VirtualServices are added, changed and removed, the desired state
//! after each change is the one a fresh start on the same manifests computes
//! (conflicts settled the same way, winners never lost).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use lvs_agent::standalone::{LocalState, ManifestChange, Role, local_state};
use lvs_crds::VirtualService;
use proptest::{prelude::*, sample::select, strategy::ValueTree, test_runner::TestRunner};

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A VirtualService from a small pool of keys (so that they conflict often),
/// ages and contents; sometimes invalid.
fn virtual_service(name: &'static str) -> impl Strategy<Value = VirtualService> {
    (
        // VIP services of two protocols, and fwmark services, whose claim
        // ignores the protocol.
        select(vec![
            "vip: 192.168.16.100\n  port: 80",
            "vip: 192.168.16.100\n  port: 80\n  protocol: UDP",
            "vip: 192.168.16.101\n  port: 443",
            "fwmark: 5",
            "fwmark: 5\n  protocol: UDP",
        ]),
        select(vec![None, Some("2026-01-01T00:00:00Z"), Some("2026-01-02T00:00:00Z")]),
        1u16..4,
        select(vec!["DirectRouting", "NAT", "Tunnel"]),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(move |(key, created, weight, forwarding, vrrp, invalid)| {
            let created = created.map_or(String::new(), |t| format!(", creationTimestamp: \"{t}\""));
            let failover = if vrrp {
                "  failover: {vrrp: {virtualRouterId: 51, advertIntervalMs: 1000, preempt: true}}\n"
            } else {
                ""
            };
            let second = if invalid { "192.168.16.999" } else { "192.168.16.22" };
            let text = format!(
                "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\n\
                 metadata: {{name: {name}, namespace: default{created}}}\n\
                 spec:\n  {key}\n  scheduler: wrr\n  forwarding: {forwarding}\n\
                 {failover}  realServers:\n    - {{address: 192.168.16.21, weight: {weight}}}\n\
                 \x20   - {{address: {second}, weight: 1}}\n"
            );
            lvs_crds::yaml::from_str(&text).expect("a VirtualService")
        })
}

/// One step: each name is left alone, (re)defined or removed.
fn step() -> impl Strategy<Value = Vec<(&'static str, Option<Option<VirtualService>>)>> {
    let one = |name: &'static str| {
        prop_oneof![
            2 => Just(None),
            2 => virtual_service(name).prop_map(|vs| Some(Some(vs))),
            1 => Just(Some(None)),
        ]
        .prop_map(move |action| (name, action))
    };
    NAMES.map(one).to_vec()
}

fn roles() -> impl Strategy<Value = (Role, Vec<IpAddr>)> {
    prop_oneof![
        Just((Role::Director, vec![])),
        Just((Role::Auto, vec![])),
        Just((Role::Auto, vec!["192.168.16.21".parse().unwrap()])),
        Just((Role::RealServer, vec!["192.168.16.22".parse().unwrap()])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn each_change_gives_what_a_fresh_start_gives(
        steps in prop::collection::vec(step(), 1..8),
        (role, addresses) in roles(),
    ) {
        let mut state = LocalState::new("bench", role);
        let mut current: BTreeMap<&str, Arc<VirtualService>> = BTreeMap::new();
        for step in steps {
            let mut change = ManifestChange::default();
            for (name, action) in step {
                let Some(new) = action else { continue };
                if let Some(old) = current.remove(name) {
                    change.removed.push(old);
                }
                if let Some(new) = new {
                    let new = Arc::new(new);
                    current.insert(name, Arc::clone(&new));
                    change.added.push(new);
                }
            }
            state.update(&change, &addresses);
            let all: Vec<VirtualService> = current.values().map(|vs| (**vs).clone()).collect();
            let (fresh, _) = local_state(&all, "bench", &addresses, role);
            prop_assert_eq!(state.spec(), &fresh);
        }
    }
}

/// The key a VirtualService claims: a fwmark service's ignores the protocol.
fn claim(vs: &VirtualService) -> String {
    match vs.spec.fwmark {
        Some(mark) => format!("fwmark {mark}"),
        None => format!("{:?} {:?} {:?}", vs.spec.vip, vs.spec.port, vs.spec.protocol),
    }
}

/// Guards the generators (as the crds' and reconcile_properties' are): the
/// property is only as good as the histories it sees. Each of these must
/// happen in some of them: keys claimed twice, a claimant of a contested key
/// changed or removed (where a loser must take over), invalid VirtualServices,
/// VRRP, director and real-server states, and every role.
#[test]
fn the_histories_cover_conflicts_takeovers_invalid_services_and_every_role() {
    let mut runner = TestRunner::deterministic();
    const HISTORIES: usize = 256;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..HISTORIES {
        let steps = prop::collection::vec(step(), 1..8).new_tree(&mut runner).unwrap().current();
        let (role, addresses) = roles().new_tree(&mut runner).unwrap().current();
        let mut happened = BTreeSet::new();
        happened.insert(match (role, addresses.is_empty()) {
            (Role::Director, _) => "role director",
            (Role::Auto, true) => "role auto, serving nothing",
            (Role::Auto, false) => "role auto, a real server of some",
            (Role::RealServer, _) => "role real-server",
        });
        // The property's replay, noting what the history goes through.
        let mut state = LocalState::new("bench", role);
        let mut current: BTreeMap<&str, Arc<VirtualService>> = BTreeMap::new();
        for step in steps {
            let mut change = ManifestChange::default();
            for (name, action) in step {
                let Some(new) = action else { continue };
                if let Some(old) = current.remove(name) {
                    happened.insert(if new.is_some() {
                        "a VirtualService changed"
                    } else {
                        "a VirtualService removed"
                    });
                    if current.values().any(|other| claim(other) == claim(&old)) {
                        happened.insert("a claimant of a contested key changed or removed");
                    }
                    change.removed.push(old);
                }
                if let Some(new) = new {
                    let new = Arc::new(new);
                    current.insert(name, Arc::clone(&new));
                    change.added.push(new);
                }
            }
            state.update(&change, &addresses);
            let claims: Vec<String> = current.values().map(|vs| claim(vs)).collect();
            if (1..claims.len()).any(|i| claims[..i].contains(&claims[i])) {
                happened.insert("a key claimed twice");
            }
            let specs = || current.values().map(|vs| &vs.spec);
            if specs().any(|spec| spec.real_servers.iter().any(|rs| rs.address.ends_with(".999"))) {
                happened.insert("an invalid VirtualService");
            }
            if specs().any(|spec| spec.failover.is_some()) {
                happened.insert("VRRP failover");
            }
            if state.spec().director.as_ref().is_some_and(|d| !d.services.is_empty()) {
                happened.insert("a director state with services");
            }
            if state.spec().real_server.is_some() {
                happened.insert("a real-server state");
            }
        }
        for what in happened {
            *seen.entry(what).or_default() += 1;
        }
    }
    println!("{seen:#?}");
    assert_eq!(seen.len(), 12, "something never happened: {seen:#?}");
    for (what, histories) in seen {
        assert!(histories >= HISTORIES / 32, "{what}: in {histories} of {HISTORIES} histories");
    }
}
