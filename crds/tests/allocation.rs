//! The allocation's defined behaviours, one case each: exhausted pools,
//! overlapping pools, a pool shrunk under live VIPs, requests outside every
//! admitting pool, reserved addresses, sharing, and stability.

use std::net::IpAddr;

use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use lvs_crds::{
    VipPool,
    allocation::{Allocated, Allocation, Claim, Owner, Refusal, Reservation, allocate},
    virtual_service::{AddressFamily, Protocol},
};

fn pool(name: &str, spec: &str) -> VipPool {
    lvs_crds::yaml::from_str(&format!(
        "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {{name: {name}}}\nspec: {spec}"
    ))
    .expect("a VipPool")
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.into());
    namespace.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    namespace
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A VirtualService's claim in `namespace`, created at second `created`, on TCP port 80.
fn claim(namespace: &str, name: &str, created: i64) -> Claim {
    Claim {
        owner: Owner { kind: "VirtualService".into(), namespace: namespace.into(), name: name.into() },
        created: Some(Time(Timestamp::from_second(created).unwrap())),
        family: AddressFamily::IPv4,
        requested: None,
        pool: None,
        previous: None,
        previous_pool: None,
        ports: vec![(80, Protocol::TCP)],
    }
}

fn outcome(allocation: &Allocation, claim: &Claim) -> Result<Allocated, Refusal> {
    allocation.outcomes[&(claim.owner.clone(), claim.family)].clone()
}

fn address(allocation: &Allocation, claim: &Claim) -> IpAddr {
    outcome(allocation, claim).unwrap_or_else(|r| panic!("{}: {}", claim.owner, r.message())).address
}

fn web_pool() -> VipPool {
    pool("web", "{addresses: [192.0.2.0/30], namespaces: [a, b]}")
}

#[test]
fn auto_assignment_takes_the_lowest_free_address_skipping_network_and_broadcast() {
    let (first, second) = (claim("a", "one", 1), claim("b", "two", 2));
    let allocation = allocate(&[web_pool()], &[], &[], &[second.clone(), first.clone()]);
    assert_eq!(address(&allocation, &first), ip("192.0.2.1"));
    assert_eq!(address(&allocation, &second), ip("192.0.2.2"));
    assert_eq!((allocation.pools["web"].used, allocation.pools["web"].free), (2, 0));
}

#[test]
fn an_exhausted_pool_refuses_the_newest_claim() {
    let claims = [claim("a", "one", 1), claim("a", "two", 2), claim("a", "three", 3)];
    let allocation = allocate(&[web_pool()], &[], &[], &claims);
    let refusal = outcome(&allocation, &claims[2]).unwrap_err();
    assert_eq!(refusal, Refusal::Exhausted { family: AddressFamily::IPv4, pools: vec!["web".into()] });
    assert_eq!(refusal.reason(), "PoolExhausted");
    assert_eq!(refusal.message(), "no free IPv4 address in VipPool web");
    // No IPv6 in the pool: exhausted at once.
    let v6 = Claim { family: AddressFamily::IPv6, ..claim("a", "v6", 1) };
    assert_eq!(
        outcome(&allocate(&[web_pool()], &[], &[], std::slice::from_ref(&v6)), &v6).unwrap_err().reason(),
        "PoolExhausted"
    );
}

#[test]
fn overlapping_pools_never_give_one_address_twice() {
    // Both pools hold 192.0.2.1-192.0.2.2; the first by name serves first.
    let pools = [
        pool("a-pool", "{addresses: [192.0.2.1-192.0.2.2], namespaces: [a]}"),
        pool("b-pool", "{addresses: [192.0.2.0/30, 192.0.2.9-192.0.2.9], namespaces: [a, b]}"),
    ];
    let claims = [claim("a", "one", 1), claim("a", "two", 2), claim("b", "three", 3), claim("a", "four", 4)];
    let allocation = allocate(&pools, &[], &[], &claims);
    let got: Vec<(IpAddr, String)> = claims
        .iter()
        .map(|c| outcome(&allocation, c))
        .map(|o| o.map(|a| (a.address, a.pool)).unwrap_or((ip("0.0.0.0"), "-".into())))
        .collect();
    assert_eq!(
        got,
        [
            (ip("192.0.2.1"), "a-pool".into()),
            (ip("192.0.2.2"), "a-pool".into()),
            (ip("192.0.2.9"), "b-pool".into()),
            (ip("0.0.0.0"), "-".into()),
        ]
    );
    // Each pool counts every held address it contains.
    assert_eq!((allocation.pools["a-pool"].used, allocation.pools["a-pool"].free), (2, 0));
    assert_eq!((allocation.pools["b-pool"].used, allocation.pools["b-pool"].free), (3, 0));
    // A request for an address held through the other pool is refused.
    let two = Claim { previous: Some(ip("192.0.2.2")), ..claims[1].clone() };
    let request = Claim { requested: Some(ip("192.0.2.2")), ..claim("b", "late", 9) };
    let with_request = allocate(&pools, &[], &[], &[claims[0].clone(), two, request.clone()]);
    let refusal = outcome(&with_request, &request).unwrap_err();
    assert_eq!(refusal.reason(), "VipInUse");
    assert_eq!(refusal.message(), "vip 192.0.2.2 is already used on the same ports by VirtualService a/two");
    // Requests are served before automatic assignments: of two new claims,
    // the request gets its address and the older automatic one another.
    let with_request = allocate(&pools, &[], &[], &[claims[0].clone(), claims[1].clone(), request.clone()]);
    assert_eq!(address(&with_request, &request), ip("192.0.2.2"));
    assert_eq!(address(&with_request, &claims[1]), ip("192.0.2.9"));
}

#[test]
fn previous_allocations_win_over_older_requests_and_survive_a_restart() {
    // "two" got 192.0.2.1 earlier (its status says so); the older "one" now asks for it.
    let holder = Claim { previous: Some(ip("192.0.2.1")), ..claim("a", "two", 2) };
    let asker = Claim { requested: Some(ip("192.0.2.1")), ..claim("a", "one", 1) };
    let allocation = allocate(&[web_pool()], &[], &[], &[asker.clone(), holder.clone()]);
    assert_eq!(address(&allocation, &holder), ip("192.0.2.1"));
    assert_eq!(outcome(&allocation, &asker).unwrap_err().reason(), "VipInUse");

    // A restart: the statuses are read back, and every claim keeps its address
    // even when new, older claims appeared meanwhile.
    let claims = [claim("a", "x", 5), claim("a", "y", 6)];
    let first = allocate(&[web_pool()], &[], &[], &claims);
    let read_back: Vec<Claim> =
        claims.iter().map(|c| Claim { previous: Some(address(&first, c)), ..c.clone() }).collect();
    let mut after_restart = read_back.clone();
    after_restart.insert(0, claim("a", "older-newcomer", 0));
    let second = allocate(&[web_pool()], &[], &[], &after_restart);
    for c in &read_back {
        assert_eq!(address(&second, c), address(&first, c), "{}", c.owner);
    }
    assert_eq!(outcome(&second, &after_restart[0]).unwrap_err().reason(), "PoolExhausted");
}

#[test]
fn a_pool_shrunk_under_a_live_vip_releases_it_and_allocates_again() {
    // 192.0.2.2 was allocated; the pool now holds only 192.0.2.5-192.0.2.6.
    let shrunk = pool("web", "{addresses: [192.0.2.5-192.0.2.6], namespaces: [a]}");
    let live = Claim { previous: Some(ip("192.0.2.2")), ..claim("a", "one", 1) };
    let allocation = allocate(std::slice::from_ref(&shrunk), &[], &[], std::slice::from_ref(&live));
    let allocated = outcome(&allocation, &live).unwrap();
    assert_eq!((allocated.address, allocated.released), (ip("192.0.2.5"), Some(ip("192.0.2.2"))));

    // One that asked for the address by name is refused instead.
    let explicit = Claim { requested: Some(ip("192.0.2.2")), ..live };
    let refusal =
        outcome(&allocate(&[shrunk], &[], &[], std::slice::from_ref(&explicit)), &explicit).unwrap_err();
    assert_eq!(refusal.reason(), "VipNotInPool");
    assert_eq!(
        refusal.message(),
        "vip 192.0.2.2 lies in no VipPool that admits namespace a (admitting: web)"
    );
}

#[test]
fn a_pool_that_stops_admitting_a_namespace_releases_its_addresses() {
    let pool_for_b = pool("web", "{addresses: [192.0.2.0/30], namespaces: [b]}");
    let live = Claim { previous: Some(ip("192.0.2.1")), ..claim("a", "one", 1) };
    let refusal =
        outcome(&allocate(&[pool_for_b], &[], &[], std::slice::from_ref(&live)), &live).unwrap_err();
    assert_eq!(refusal, Refusal::NoPool { namespace: "a".into() });
    assert_eq!(refusal.message(), "no VipPool admits namespace a");
}

#[test]
fn requests_outside_every_admitting_pool_are_refused_naming_the_reason() {
    let pools = [web_pool(), pool("other", "{addresses: [198.51.100.0/24], namespaces: [z]}")];
    let outside = Claim { requested: Some(ip("198.51.100.7")), ..claim("a", "one", 1) };
    let refusal = outcome(&allocate(&pools, &[], &[], std::slice::from_ref(&outside)), &outside).unwrap_err();
    assert_eq!(
        refusal.message(),
        "vip 198.51.100.7 lies in no VipPool that admits namespace a (admitting: web)"
    );
    // A pool named by the claim must exist and admit it.
    let missing = Claim { pool: Some("nope".into()), ..claim("a", "two", 1) };
    let foreign = Claim { pool: Some("other".into()), ..claim("a", "three", 1) };
    let allocation = allocate(&pools, &[], &[], &[missing.clone(), foreign.clone()]);
    assert_eq!(outcome(&allocation, &missing).unwrap_err().message(), "VipPool nope does not exist");
    assert_eq!(
        outcome(&allocation, &foreign).unwrap_err().message(),
        "VipPool other does not admit namespace a"
    );
    // A namespace no pool admits.
    let stranger = claim("c", "four", 1);
    let refusal =
        outcome(&allocate(&pools, &[], &[], std::slice::from_ref(&stranger)), &stranger).unwrap_err();
    assert_eq!(refusal.reason(), "NoPool");
}

#[test]
fn reserved_addresses_are_never_given() {
    let pools = [pool("web", "{addresses: [10.0.0.1-10.0.0.4], namespaces: [a]}")];
    let reservations = [
        Reservation::address(ip("10.0.0.1"), "the address of node lvs1"),
        Reservation::net(&"10.0.0.2/31".parse().unwrap(), "inside the Service CIDR 10.0.0.2/31"),
    ];
    let auto = claim("a", "one", 1);
    let request = Claim { requested: Some(ip("10.0.0.3")), ..claim("a", "two", 2) };
    let allocation = allocate(&pools, &[], &reservations, &[auto.clone(), request.clone()]);
    assert_eq!(address(&allocation, &auto), ip("10.0.0.4"));
    let refusal = outcome(&allocation, &request).unwrap_err();
    assert_eq!(refusal.reason(), "VipReserved");
    assert_eq!(refusal.message(), "vip 10.0.0.3 is reserved: inside the Service CIDR 10.0.0.2/31");
    assert_eq!((allocation.pools["web"].used, allocation.pools["web"].free), (1, 0));
}

#[test]
fn sharing_needs_a_pool_that_allows_it_and_other_ports() {
    let request = |name: &str, created, port| Claim {
        requested: Some(ip("192.0.2.1")),
        ports: vec![(port, Protocol::TCP)],
        ..claim("a", name, created)
    };
    let claims =
        [request("http", 1, 80), request("https", 2, 443), request("again", 3, 80), request("all", 4, 0)];
    let shared = pool("web", "{addresses: [192.0.2.0/30], namespaces: [a], allowSharedVip: true}");
    let allocation = allocate(&[shared], &[], &[], &claims);
    let reasons: Vec<&str> =
        claims.iter().map(|c| outcome(&allocation, c).map_or_else(|r| r.reason(), |_| "ok")).collect();
    assert_eq!(reasons, ["ok", "ok", "VipInUse", "VipInUse"]);
    assert_eq!(allocation.pools["web"].used, 1);

    let allocation = allocate(&[web_pool()], &[], &[], &claims);
    let refusal = outcome(&allocation, &claims[1]).unwrap_err();
    assert_eq!(
        refusal.message(),
        "vip 192.0.2.1 is already used by VirtualService a/http, and its pool does not share addresses"
    );
    // A Service and a VirtualService of one name are two owners (of the
    // same age, the kind decides: Service before VirtualService).
    let service =
        Claim { owner: Owner { kind: "Service".into(), ..claims[0].owner.clone() }, ..claims[0].clone() };
    let allocation = allocate(&[web_pool()], &[], &[], &[claims[0].clone(), service.clone()]);
    assert_eq!(address(&allocation, &service), ip("192.0.2.1"));
    assert_eq!(
        outcome(&allocation, &claims[0]).unwrap_err().message(),
        "vip 192.0.2.1 is already used on the same ports by Service a/http"
    );
}

#[test]
fn namespaces_are_admitted_by_name_or_labels_and_auto_assign_can_be_off() {
    let pools = [
        pool("labelled", "{addresses: [192.0.2.8/30], namespaceSelector: {matchLabels: {team: web}}}"),
        pool("manual", "{addresses: [192.0.2.0/30], namespaces: [a], autoAssign: false}"),
    ];
    let namespaces = [namespace("web1", &[("team", "web")]), namespace("a", &[])];
    let web1 = claim("web1", "one", 1);
    let a = claim("a", "two", 2);
    let a_named = Claim { pool: Some("manual".into()), ..claim("a", "three", 3) };
    let allocation = allocate(&pools, &namespaces, &[], &[web1.clone(), a.clone(), a_named.clone()]);
    assert_eq!(address(&allocation, &web1), ip("192.0.2.9"));
    assert_eq!(outcome(&allocation, &a).unwrap_err().reason(), "NoAutoAssign");
    assert_eq!(address(&allocation, &a_named), ip("192.0.2.1"));
}

#[test]
fn ipv6_pools_and_ranges() {
    let pools =
        [pool("v6", r#"{addresses: ["2001:db8::/126", "2001:db8::10-2001:db8::10"], namespaces: [a]}"#)];
    let claims: Vec<Claim> =
        (0..4).map(|i| Claim { family: AddressFamily::IPv6, ..claim("a", &format!("c{i}"), i) }).collect();
    let allocation = allocate(&pools, &[], &[], &claims);
    let got: Vec<String> = claims
        .iter()
        .map(|c| outcome(&allocation, c).map_or("-".into(), |a| a.address.to_string()))
        .collect();
    // The subnet-router anycast address (::0) is left out.
    assert_eq!(got, ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::10"]);
    let big = [pool("big", r#"{addresses: ["2001:db8::/32"], namespaces: [a]}"#)];
    assert_eq!(allocate(&big, &[], &[], &[]).pools["big"].free, i64::MAX as u64);
}

#[test]
fn pool_entries_are_checked_naming_the_entry() {
    let reversed = pool("bad", "{addresses: [192.0.2.9-192.0.2.1, 192.0.2.16/30], namespaces: [a]}");
    let errors = reversed.spec.validate().unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "spec.addresses[0]: 192.0.2.9-192.0.2.1: the range ends (192.0.2.1) before it starts (192.0.2.9)"
    );
    // The other entries still serve.
    let one = claim("a", "one", 1);
    let allocation = allocate(&[reversed], &[], &[], std::slice::from_ref(&one));
    assert_eq!(address(&allocation, &one), ip("192.0.2.17"));
    assert_eq!(allocation.pools["bad"].errors.len(), 1);
}
