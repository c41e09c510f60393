//! Properties of the reconcile engine, checked against a model of the kernel's
//! IPVS table: plans apply cleanly (no add of what exists, no edit or delete of
//! what does not), reach the desired state, leave foreign services alone, never
//! delete and add the same object, and never cut a drain short.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use lvs_agent::{
    desired::DesiredService,
    reconcile::{
        Drains, KernelTable, ObservedService, Ownership, Plan, apply_to_table, plan, plan_services,
        waits_for_connections,
    },
};
use lvs_ipvs::{
    AddressFamily, Destination, DestinationEntry, ForwardMethod, IpvsOp, Netmask, Protocol, Service,
    ServiceEntry, ServiceFlags, ServiceKey, Stats, ipvsadm::TableEntry,
};
use proptest::{array::uniform3, option, prelude::*};

const NOW: Duration = Duration::from_secs(1_000_000);
/// Later than every drain period generated here.
const LATER: Duration = Duration::from_secs(2_000_000);

/// The kernel's table: services by key, destinations by address.
type Table = BTreeMap<ServiceKey, (ServiceEntry, BTreeMap<SocketAddr, DestinationEntry>)>;

fn table(entries: &[TableEntry]) -> Table {
    entries
        .iter()
        .map(|(service, destinations)| {
            let destinations = destinations.iter().map(|d| (d.destination.address, d.clone())).collect();
            (service.service.key, (service.clone(), destinations))
        })
        .collect()
}

/// The engine's cache of `entries`, each service's destinations by address.
fn cache(entries: &[TableEntry]) -> KernelTable {
    entries.iter().map(|entry| (entry.0.service.key, ObservedService::from(entry))).map(by_address).collect()
}

fn by_address((key, mut observed): (ServiceKey, ObservedService)) -> (ServiceKey, ObservedService) {
    observed.destinations.sort_by_key(|d| d.destination.address);
    (key, observed)
}

fn entries(table: Table) -> Vec<TableEntry> {
    table
        .into_values()
        .map(|(service, destinations)| (service, destinations.into_values().collect()))
        .collect()
}

/// What the kernel does with `ops`, failing where it would return an error.
fn apply_model(observed: &[TableEntry], ops: &[IpvsOp]) -> Result<Vec<TableEntry>, String> {
    let mut table = table(observed);
    for op in ops {
        let fail = |why: &str| format!("{op}: {why}");
        match op {
            IpvsOp::AddService(service) => {
                if table.contains_key(&service.key) {
                    return Err(fail("service exists"));
                }
                let entry = ServiceEntry { service: service.clone(), stats: Stats::default() };
                table.insert(service.key, (entry, BTreeMap::new()));
            }
            IpvsOp::EditService(service) => {
                table.get_mut(&service.key).ok_or_else(|| fail("no such service"))?.0.service =
                    service.clone();
            }
            IpvsOp::DeleteService(key) => {
                table.remove(key).ok_or_else(|| fail("no such service"))?;
            }
            IpvsOp::AddDestination(key, destination) => {
                let destinations = &mut table.get_mut(key).ok_or_else(|| fail("no such service"))?.1;
                if destinations.contains_key(&destination.address) {
                    return Err(fail("destination exists"));
                }
                let entry = DestinationEntry {
                    destination: *destination,
                    active_connections: 0,
                    inactive_connections: 0,
                    persistent_connections: 0,
                    stats: Stats::default(),
                };
                destinations.insert(destination.address, entry);
            }
            IpvsOp::EditDestination(key, destination) => {
                let destinations = &mut table.get_mut(key).ok_or_else(|| fail("no such service"))?.1;
                let entry =
                    destinations.get_mut(&destination.address).ok_or_else(|| fail("no such destination"))?;
                entry.destination = *destination;
            }
            IpvsOp::DeleteDestination(key, address) => {
                let destinations = &mut table.get_mut(key).ok_or_else(|| fail("no such service"))?.1;
                destinations.remove(address).ok_or_else(|| fail("no such destination"))?;
            }
            _ => return Err(fail("not a reconcile operation")),
        }
    }
    Ok(entries(table))
}

/// The inputs of one plan.
#[derive(Debug, Clone)]
struct World {
    desired: Vec<DesiredService>,
    observed: Vec<TableEntry>,
    owned: Ownership,
    drains: Drains,
    exclusive: bool,
}

impl World {
    fn plan(&self, now: Duration) -> Plan {
        plan(&self.desired, &self.observed, &self.owned, &self.drains, now, self.exclusive)
    }

    /// The world after `plan` is applied.
    fn after(&self, plan: &Plan) -> World {
        let observed =
            apply_model(&self.observed, &plan.ops).unwrap_or_else(|e| panic!("bad plan {plan:#?}: {e}"));
        World { observed, owned: plan.owned.clone(), drains: plan.drains.clone(), ..self.clone() }
    }

    /// The same world where nothing drains: every drain period is 0.
    fn without_drains(mut self) -> World {
        self.desired.iter_mut().for_each(|d| d.drain = Duration::ZERO);
        self.owned.0.values_mut().for_each(|period| *period = Duration::ZERO);
        self
    }

    fn desired_keys(&self) -> BTreeSet<ServiceKey> {
        self.desired.iter().map(|d| d.service.key).collect()
    }

    /// Services the agent may remove: owned ones, or all with `exclusive`.
    fn removable(&self, key: &ServiceKey) -> bool {
        self.exclusive || self.owned.owns(key)
    }

    /// The drain period of a destination of `key` that is no longer desired.
    fn drain_period(&self, key: &ServiceKey) -> Duration {
        match self.desired.iter().find(|d| d.service.key == *key) {
            Some(desired) => desired.drain,
            None => self.owned.0.get(key).copied().unwrap_or_default(),
        }
    }
}

/// Services overlap between desired, observed and owned: all come from this pool.
fn key_pool() -> Vec<ServiceKey> {
    let address = |text: &str| text.parse::<SocketAddr>().unwrap();
    vec![
        ServiceKey::tcp(address("10.0.0.1:80")),
        ServiceKey::udp(address("10.0.0.1:80")),
        ServiceKey::tcp(address("10.0.0.2:443")),
        ServiceKey::Address { protocol: Protocol::Sctp, address: address("10.0.0.3:80") },
        ServiceKey::tcp(address("[fd00::1]:80")),
        ServiceKey::udp(address("[fd00::1]:53")),
        ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark: 1 },
        ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark: 2 },
    ]
}

fn destination_addresses(key: &ServiceKey) -> [SocketAddr; 3] {
    let texts = match key.family() {
        AddressFamily::Ipv4 => ["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:8080"],
        AddressFamily::Ipv6 => ["[fd01::1]:80", "[fd01::2]:80", "[fd01::3]:8080"],
    };
    texts.map(|text| text.parse().unwrap())
}

/// Scheduler, persistent, one-packet.
type ServiceShape = (usize, bool, bool);
/// Weight, forwarding, upper threshold.
type DestinationShape = (u32, usize, u32);

fn service(key: ServiceKey, (scheduler, persistent, one_packet): ServiceShape) -> Service {
    let mut service = Service::new(key, ["rr", "wlc", "sh"][scheduler]);
    service.flags = service.flags.with(ServiceFlags::ONE_PACKET, one_packet);
    if persistent { service.persistent(300, Netmask::host(key.family())) } else { service }
}

fn destination(address: SocketAddr, (weight, forward, upper_threshold): DestinationShape) -> Destination {
    let forward = [ForwardMethod::Masquerade, ForwardMethod::DirectRoute, ForwardMethod::Tunnel][forward];
    Destination { upper_threshold, ..Destination::new(address, forward, weight) }
}

fn service_shape() -> impl Strategy<Value = ServiceShape> {
    (0..3usize, any::<bool>(), any::<bool>())
}

fn destination_shape() -> impl Strategy<Value = DestinationShape> {
    (0..4u32, 0..3usize, prop_oneof![Just(0u32), Just(10)])
}

fn drain_period() -> impl Strategy<Value = Duration> {
    prop_oneof![Just(0u64), Just(30), Just(300)].prop_map(Duration::from_secs)
}

/// What one key of the pool is: desired, observed, owned, and which of its
/// destinations have drains recorded (some of them stale).
#[allow(clippy::type_complexity)]
fn key_case() -> impl Strategy<
    Value = (
        Option<(ServiceShape, [Option<DestinationShape>; 3], Duration)>,
        Option<(ServiceShape, [Option<(DestinationShape, u32, u32)>; 3])>,
        Option<Duration>,
        [Option<u64>; 3],
    ),
> {
    (
        option::of((service_shape(), uniform3(option::of(destination_shape())), drain_period())),
        option::of((service_shape(), uniform3(option::of((destination_shape(), 0..3u32, 0..3u32))))),
        option::of(drain_period()),
        uniform3(option::of(0..600u64)),
    )
}

fn world() -> impl Strategy<Value = World> {
    (proptest::collection::vec(key_case(), key_pool().len()), any::<bool>()).prop_map(|(cases, exclusive)| {
        let mut world = World {
            desired: vec![],
            observed: vec![],
            owned: Ownership::default(),
            drains: Drains::default(),
            exclusive,
        };
        for (key, (desired, observed, owned, drains)) in key_pool().into_iter().zip(cases) {
            let addresses = destination_addresses(&key);
            if let Some((shape, destinations, drain)) = desired {
                let destinations = addresses
                    .iter()
                    .zip(destinations)
                    .filter_map(|(a, d)| Some(destination(*a, d?)))
                    .collect();
                world.desired.push(DesiredService { service: service(key, shape), destinations, drain });
            }
            if let Some((shape, destinations)) = observed {
                let destinations = addresses
                    .iter()
                    .zip(destinations)
                    .filter_map(|(address, d)| {
                        let (shape, active_connections, inactive_connections) = d?;
                        Some(DestinationEntry {
                            destination: destination(*address, shape),
                            active_connections,
                            inactive_connections,
                            persistent_connections: 0,
                            stats: Stats::default(),
                        })
                    })
                    .collect();
                world.observed.push((
                    ServiceEntry { service: service(key, shape), stats: Stats::default() },
                    destinations,
                ));
            }
            if let Some(period) = owned {
                world.owned.0.insert(key, period);
            }
            for (address, age) in addresses.iter().zip(drains) {
                if let Some(age) = age {
                    world.drains.0.insert((key, *address), NOW - Duration::from_secs(age));
                }
            }
        }
        world
    })
}

/// The kernel holds exactly the desired services, no longer holds the removable
/// ones, and holds foreign ones as before.
fn assert_reached(world: &World, after: &[TableEntry]) {
    let after = table(after);
    for desired in &world.desired {
        let (service, destinations) = after.get(&desired.service.key).expect("desired service present");
        assert_eq!(service.service, desired.service);
        let destinations: Vec<_> = destinations.values().map(|d| d.destination).collect();
        assert_eq!(destinations, desired.destinations);
    }
    let before = table(&world.observed);
    let kept: BTreeSet<_> = before.keys().filter(|key| !world.removable(key)).copied().collect();
    for key in kept.difference(&world.desired_keys()) {
        assert_eq!(after.get(key), before.get(key), "foreign {key} untouched");
    }
    let expected: BTreeSet<_> = world.desired_keys().union(&kept).copied().collect();
    assert_eq!(after.keys().copied().collect::<BTreeSet<_>>(), expected, "no other services");
}

proptest! {
    /// (a) Without drains, one plan reaches the desired state.
    #[test]
    fn plan_reaches_the_desired_state(world in world()) {
        let world = world.without_drains();
        let plan = world.plan(NOW);
        let after = world.after(&plan);
        assert_reached(&world, &after.observed);
        prop_assert_eq!(plan.drains, Drains::default());
        prop_assert_eq!(plan.next_check, None);
        prop_assert_eq!(plan.owned.keys(), world.desired_keys());
    }

    /// (b) Without drains, a second plan is empty.
    #[test]
    fn plan_converges_in_one_step(world in world()) {
        let world = world.without_drains();
        let after = world.after(&world.plan(NOW));
        prop_assert_eq!(after.plan(NOW).ops, vec![]);
    }

    /// (b) With drains, once they end a second plan reaches the desired state and a third is empty.
    #[test]
    fn plan_converges_once_drains_end(world in world()) {
        let first = world.plan(NOW);
        let draining = world.after(&first);
        let second = draining.plan(LATER);
        let done = draining.after(&second);
        assert_reached(&world, &done.observed);
        let third = done.plan(LATER);
        prop_assert_eq!(third.ops, vec![]);
        prop_assert_eq!(third.drains, Drains::default());
    }

    /// Plans depend on what the tables hold, not on their order.
    #[test]
    fn plan_is_deterministic(world in world()) {
        let mut reversed = world.clone();
        reversed.desired.reverse();
        reversed.observed.reverse();
        reversed.observed.iter_mut().for_each(|(_, destinations)| destinations.reverse());
        prop_assert_eq!(reversed.plan(NOW), world.plan(NOW));
    }

    /// (c) Only desired or owned services are touched, unless exclusive.
    #[test]
    fn plan_touches_only_desired_or_owned_services(world in world()) {
        let world = World { exclusive: false, ..world };
        let allowed: BTreeSet<_> = world.desired_keys().into_iter().chain(world.owned.keys()).collect();
        for op in world.plan(NOW).ops {
            prop_assert!(allowed.contains(&service_of(&op)), "{} touches a foreign service", op);
        }
    }

    /// (d) Each service and destination is touched at most once: never deleted and added again.
    #[test]
    fn plan_touches_each_object_once(world in world()) {
        let plan = world.plan(NOW);
        let mut services = BTreeSet::new();
        let mut destinations = BTreeSet::new();
        for op in &plan.ops {
            let fresh = match op {
                IpvsOp::AddService(s) | IpvsOp::EditService(s) => services.insert(s.key),
                IpvsOp::DeleteService(key) => services.insert(*key),
                IpvsOp::AddDestination(key, d) | IpvsOp::EditDestination(key, d) => destinations.insert((*key, d.address)),
                IpvsOp::DeleteDestination(key, address) => destinations.insert((*key, *address)),
                _ => false,
            };
            prop_assert!(fresh, "{} touched twice in {:?}", op, plan.ops);
        }
    }

    /// The plan's next check is the first end of its drains, each running its
    /// service's owned period: what the engine derives from the drains it keeps.
    #[test]
    fn next_check_is_the_first_drain_end(world in world(), elapsed in 0..400u64) {
        let plan = world.plan(NOW + Duration::from_secs(elapsed));
        let first_end = plan.drains.0.iter().map(|((key, _), start)| {
            start.saturating_add(plan.owned.0.get(key).copied().unwrap_or_default())
        }).min();
        prop_assert_eq!(plan.next_check, first_end);
    }

    /// (e) A busy destination of a TCP/SCTP/fwmark service is deleted only once its drain is over;
    /// until then it has weight 0 and its drain is recorded.
    #[test]
    fn drains_are_never_cut_short(world in world(), elapsed in 0..400u64) {
        let now = NOW + Duration::from_secs(elapsed);
        let plan = world.plan(now);
        let after = table(&world.after(&plan).observed);
        let desired: BTreeMap<_, _> = world.desired.iter().map(|d| (d.service.key, d)).collect();
        for (entry, destinations) in &world.observed {
            let key = entry.service.key;
            if !desired.contains_key(&key) && !world.removable(&key) {
                continue;
            }
            let period = world.drain_period(&key);
            for d in destinations {
                let address = d.destination.address;
                let wanted = desired.get(&key).is_some_and(|w| w.destinations.iter().any(|w| w.address == address));
                let busy = d.active_connections + d.inactive_connections > 0;
                if wanted || !busy || !waits_for_connections(&key) {
                    continue;
                }
                let start = world.drains.0.get(&(key, address)).copied().unwrap_or(now);
                let kept = after.get(&key).and_then(|(_, ds)| ds.get(&address));
                if now < start + period {
                    let kept = kept.unwrap_or_else(|| panic!("{address} of {key} deleted while draining"));
                    prop_assert_eq!(kept.destination.weight, 0);
                    prop_assert_eq!(plan.drains.0.get(&(key, address)), Some(&start));
                    prop_assert!(plan.next_check.is_some_and(|next| next <= start + period && next > now));
                } else {
                    prop_assert!(kept.is_none(), "{} of {} kept after its drain", address, key);
                }
            }
        }
    }
}

proptest! {
    /// A plan for some services does what the whole plan does for them, and
    /// carries the others' ownership and drains over untouched.
    #[test]
    fn subset_plan_is_the_whole_plan_restricted(world in world(), chosen in proptest::collection::vec(any::<bool>(), 8)) {
        let keys: BTreeSet<ServiceKey> =
            key_pool().into_iter().zip(chosen).filter(|(_, c)| *c).map(|(k, _)| k).collect();
        let cached = cache(&world.observed);
        let whole = world.plan(NOW);
        let part = plan_services(&keys, &world.desired, &cached, &world.owned, &world.drains, NOW, world.exclusive);
        let restricted: Vec<&IpvsOp> = whole.ops.iter().filter(|op| keys.contains(&service_of(op))).collect();
        prop_assert_eq!(part.ops.iter().collect::<Vec<_>>(), restricted);
        for key in key_pool() {
            let (expected_owned, expected_drains) = if keys.contains(&key) {
                (&whole.owned, &whole.drains)
            } else {
                (&world.owned, &world.drains)
            };
            prop_assert_eq!(part.owned.0.get(&key), expected_owned.0.get(&key), "ownership of {}", key);
            let drains_of = |d: &Drains| d.0.iter().filter(|((k, _), _)| *k == key).map(|(a, t)| (*a, *t)).collect::<Vec<_>>();
            prop_assert_eq!(drains_of(&part.drains), drains_of(expected_drains), "drains of {}", key);
        }
        // The next check is the first end of the part's drains (its own and
        // those carried over), whatever the keys; with every key, the whole's.
        let first_end = part.drains.0.iter().map(|((key, _), start)| {
            start.saturating_add(part.owned.0.get(key).copied().unwrap_or_default())
        }).min();
        prop_assert_eq!(part.next_check, first_end);
        if keys.len() == key_pool().len() {
            prop_assert_eq!(part.next_check, whole.next_check);
        }
    }

    /// The engine's cache follows a plan without reading the kernel back: as the kernel model does.
    #[test]
    fn cache_follows_the_applied_plan(world in world()) {
        let plan = world.plan(NOW);
        let mut cached = cache(&world.observed);
        apply_to_table(&mut cached, &plan.ops);
        let cached: KernelTable = cached.into_iter().map(by_address).collect();
        prop_assert_eq!(cached, cache(&world.after(&plan).observed));
    }
}

fn service_of(op: &IpvsOp) -> ServiceKey {
    match op {
        IpvsOp::AddService(s) | IpvsOp::EditService(s) => s.key,
        IpvsOp::DeleteService(key)
        | IpvsOp::AddDestination(key, _)
        | IpvsOp::EditDestination(key, _)
        | IpvsOp::DeleteDestination(key, _) => *key,
        op => panic!("{op} is not a reconcile operation"),
    }
}

#[test]
fn model_rejects_bad_plans() {
    let key = key_pool()[0];
    let service = Service::new(key, "rr");
    let destination = Destination::new("10.1.0.1:80".parse().unwrap(), ForwardMethod::DirectRoute, 1);
    let added = apply_model(&[], &[IpvsOp::AddService(service.clone())]).unwrap();
    assert!(apply_model(&added, &[IpvsOp::AddService(service.clone())]).is_err());
    assert!(apply_model(&[], &[IpvsOp::EditService(service)]).is_err());
    assert!(apply_model(&added, &[IpvsOp::EditDestination(key, destination)]).is_err());
    assert!(apply_model(&added, &[IpvsOp::DeleteDestination(key, destination.address)]).is_err());
    let with_destination = apply_model(&added, &[IpvsOp::AddDestination(key, destination)]).unwrap();
    assert!(apply_model(&with_destination, &[IpvsOp::AddDestination(key, destination)]).is_err());
    assert!(
        apply_model(&with_destination, &[IpvsOp::DeleteService(key), IpvsOp::DeleteService(key)]).is_err()
    );
}

/// The generated worlds cover what the properties are about (as the crds'
/// generators are checked): drains running, a next check, services owned,
/// foreign services, and both modes.
#[test]
fn the_worlds_cover_drains_ownership_and_foreign_services() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let samples = 1000;
    let (mut draining, mut checked, mut owned, mut foreign, mut exclusive) = (0, 0, 0, 0, 0);
    for _ in 0..samples {
        let world = world().new_tree(&mut runner).unwrap().current();
        let plan = world.plan(NOW);
        draining += usize::from(!plan.drains.0.is_empty());
        checked += usize::from(plan.next_check.is_some());
        owned += usize::from(!world.owned.0.is_empty());
        let desired = world.desired_keys();
        foreign += usize::from(world.observed.iter().any(|(entry, _)| {
            !desired.contains(&entry.service.key) && !world.owned.owns(&entry.service.key)
        }));
        exclusive += usize::from(world.exclusive);
    }
    let counts = [
        ("draining", draining),
        ("a next check", checked),
        ("owned", owned),
        ("foreign", foreign),
        ("exclusive", exclusive),
    ];
    println!("of {samples} worlds: {counts:?}");
    for (what, count) in counts {
        assert!(count >= samples / 10 && count < samples, "{what}: {count} of {samples}");
    }
}
