//! The reconcile engine: desired services and the observed kernel table in, the
//! fewest IPVS operations that make the kernel match out. Pure: the caller dumps
//! the table, applies [`Plan::ops`] in order and keeps [`Plan::owned`] and
//! [`Plan::drains`] (in its state file) for the next round.
//!
//! Rules:
//! - Nothing is flushed, and nothing that can be edited in place is deleted and
//!   added again: a service whose configuration differs is edited, and so is a
//!   destination whose weight, thresholds, forwarding or tunnel differ. Deleted
//!   destinations go to the kernel's trash list, which every later add scans.
//! - Every desired service becomes owned. A service in the kernel that is not
//!   desired is removed only if owned (or with `exclusive`); otherwise it is
//!   foreign and left untouched. An owned service gone from the kernel is
//!   forgotten.
//! - A destination that is no longer desired drains when its service is TCP,
//!   SCTP or fwmark (fwmark services count as TCP): weight 0 first, the start
//!   recorded in [`Drains`], deleted once the drain period has passed or as soon
//!   as its active and inactive connections reach 0. Other protocols (UDP) have
//!   no connection end to wait for: their destinations are deleted at once, and
//!   so are destinations of a service with a drain period of 0. A destination
//!   that is desired again while draining is edited back and leaves the drain set.
//! - A whole service that is no longer desired drains the same way, with the
//!   period it was last desired with (kept in [`Ownership`], since the desired
//!   state no longer has it; foreign services removed with `exclusive` have
//!   none): its destinations go to weight 0 and are deleted one by one as their
//!   drains end, the service staying owned meanwhile; once none would be left,
//!   the service is deleted with one `DeleteService`, which takes its remaining
//!   idle destinations with it. A desired service is never deleted.
//! - Order: services by key; within one, the service add or edit first, then
//!   destination deletes, edits and adds, and a service delete alone.
//!
//! A dry run prints the plan as ipvsadm lines:
//!
//! ```
//! use std::time::Duration;
//!
//! use lvs_agent::{
//!     desired::DesiredService,
//!     reconcile::{Drains, Ownership, plan},
//! };
//! use lvs_ipvs::{Destination, ForwardMethod, Service, ServiceKey, ipvsadm::op_rule};
//!
//! let web = DesiredService {
//!     service: Service::new(ServiceKey::tcp("192.168.16.100:80".parse()?), "wrr"),
//!     destinations: vec![Destination::new("192.168.16.21:80".parse()?, ForwardMethod::DirectRoute, 2)],
//!     drain: Duration::from_secs(30),
//! };
//! let now = Duration::from_secs(1_700_000_000);
//! let plan = plan(&[web], &[], &Ownership::default(), &Drains::default(), now, false);
//! let lines: Vec<String> = plan.ops.iter().map(op_rule).collect();
//! assert_eq!(lines, ["-A -t 192.168.16.100:80 -s wrr", "-a -t 192.168.16.100:80 -r 192.168.16.21:80 -g -w 2"]);
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use crate::desired::DesiredService;
use lvs_ipvs::{Destination, DestinationEntry, IpvsOp, Protocol, Service, ServiceKey, ipvsadm::TableEntry};

/// The services this agent owns, each with the drain period it was last desired
/// with: when it stops being desired, its destinations drain that long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership(pub BTreeMap<ServiceKey, Duration>);

impl Ownership {
    pub fn owns(&self, key: &ServiceKey) -> bool {
        self.0.contains_key(key)
    }

    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        self.0.keys().copied().collect()
    }
}

/// Destinations being drained, by service and address: when each drain started,
/// since the UNIX epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains(pub BTreeMap<(ServiceKey, SocketAddr), Duration>);

/// What to do, and the state to keep for the next round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// To apply in this order.
    pub ops: Vec<IpvsOp>,
    /// Ownership once the ops are applied.
    pub owned: Ownership,
    /// Drains still running once the ops are applied.
    pub drains: Drains,
    /// When the first drain period ends: plan again then (drains that end because
    /// connections close are seen by the next periodic round).
    pub next_check: Option<Duration>,
}

/// The operations that turn `observed` into `desired`, given what this agent owns
/// and drains; `now` is the time since the UNIX epoch, and `exclusive` makes every
/// service in the kernel owned.
pub fn plan(
    desired: &[DesiredService],
    observed: &[TableEntry],
    owned: &Ownership,
    drains: &Drains,
    now: Duration,
    exclusive: bool,
) -> Plan {
    let observed: Vec<ObservedService> = observed.iter().map(ObservedService::from).collect();
    plan_of(desired, &observed, owned, drains, now, exclusive)
}

/// A service in the kernel as the planner reads it: its configuration and its
/// destinations', with their connections, without the counters a dump also
/// brings (the cache of a large table is half the size without them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedService {
    pub service: Service,
    pub destinations: Vec<ObservedDestination>,
}

/// A destination in the kernel: its configuration and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedDestination {
    pub destination: Destination,
    pub active_connections: u32,
    pub inactive_connections: u32,
}

impl From<&DestinationEntry> for ObservedDestination {
    fn from(entry: &DestinationEntry) -> Self {
        ObservedDestination {
            destination: entry.destination,
            active_connections: entry.active_connections,
            inactive_connections: entry.inactive_connections,
        }
    }
}

impl From<&TableEntry> for ObservedService {
    fn from((service, destinations): &TableEntry) -> Self {
        ObservedService {
            service: service.service.clone(),
            destinations: destinations.iter().map(ObservedDestination::from).collect(),
        }
    }
}

/// The kernel table as the engine caches it, by service key.
pub type KernelTable = BTreeMap<ServiceKey, ObservedService>;

/// [`plan`] against the cached table.
pub fn plan_table(
    desired: &[DesiredService],
    observed: &KernelTable,
    owned: &Ownership,
    drains: &Drains,
    now: Duration,
    exclusive: bool,
) -> Plan {
    plan_of(desired, observed.values(), owned, drains, now, exclusive)
}

/// [`plan`] for the services `keys` alone, as when only their desired state
/// changed: the other services are neither looked at nor touched, and their
/// ownership and drains are carried over as they are. Only the entries of `keys`
/// are read from `desired` and `observed`, so the cost follows the change, not
/// the table.
pub fn plan_services(
    keys: &BTreeSet<ServiceKey>,
    desired: &[DesiredService],
    observed: &KernelTable,
    owned: &Ownership,
    drains: &Drains,
    now: Duration,
    exclusive: bool,
) -> Plan {
    let desired = desired.iter().filter(|d| keys.contains(&d.service.key));
    let observed = keys.iter().filter_map(|key| observed.get(key));
    let mut plan = plan_of(desired, observed, owned, drains, now, exclusive);
    for (key, period) in owned.0.iter().filter(|(key, _)| !keys.contains(key)) {
        plan.owned.0.insert(*key, *period);
    }
    for (&(key, address), &start) in drains.0.iter().filter(|((key, _), _)| !keys.contains(key)) {
        plan.drains.0.insert((key, address), start);
        let end = start.saturating_add(owned.0.get(&key).copied().unwrap_or_default());
        plan.next_check = Some(plan.next_check.map_or(end, |next| next.min(end)));
    }
    plan
}

/// What the kernel holds once `ops` succeeded, from what it held before: a
/// changed service's cache entry without reading it back. New destinations
/// have no connections yet; edited ones keep their counters.
pub fn apply_to_table<'a>(table: &mut KernelTable, ops: impl IntoIterator<Item = &'a IpvsOp>) {
    let new_destination = |destination: &Destination| ObservedDestination {
        destination: *destination,
        active_connections: 0,
        inactive_connections: 0,
    };
    // Lists that grew, trimmed at the end: a cache of many thousand services
    // keeps no spare capacity.
    let mut grown = BTreeSet::new();
    for op in ops {
        match op {
            IpvsOp::AddService(service) => {
                let entry = ObservedService { service: service.clone(), destinations: Vec::new() };
                table.insert(service.key, entry);
            }
            IpvsOp::EditService(service) => {
                if let Some(entry) = table.get_mut(&service.key) {
                    entry.service = service.clone();
                }
            }
            IpvsOp::DeleteService(key) => {
                table.remove(key);
            }
            IpvsOp::AddDestination(key, destination) => {
                if let Some(ObservedService { destinations, .. }) = table.get_mut(key) {
                    destinations.retain(|d| d.destination.address != destination.address);
                    destinations.push(new_destination(destination));
                    grown.insert(*key);
                }
            }
            IpvsOp::EditDestination(key, destination) => {
                let entries = table.get_mut(key).map(|entry| &mut entry.destinations);
                let address = destination.address;
                if let Some(entry) =
                    entries.and_then(|ds| ds.iter_mut().find(|d| d.destination.address == address))
                {
                    entry.destination = *destination;
                }
            }
            IpvsOp::DeleteDestination(key, address) => {
                if let Some(ObservedService { destinations, .. }) = table.get_mut(key) {
                    destinations.retain(|d| d.destination.address != *address);
                }
            }
            _ => {}
        }
    }
    for key in grown {
        if let Some(entry) = table.get_mut(&key) {
            entry.destinations.shrink_to_fit();
        }
    }
}

fn plan_of<'a>(
    desired: impl IntoIterator<Item = &'a DesiredService>,
    observed: impl IntoIterator<Item = &'a ObservedService>,
    owned: &Ownership,
    drains: &Drains,
    now: Duration,
    exclusive: bool,
) -> Plan {
    let desired: BTreeMap<_, _> = desired.into_iter().map(|d| (d.service.key, d)).collect();
    let observed: BTreeMap<_, _> = observed.into_iter().map(|entry| (entry.service.key, entry)).collect();
    let keys: BTreeSet<_> = desired.keys().chain(observed.keys()).copied().collect();

    let mut planner = Planner { now, drains, plan: Plan::default() };
    for key in keys {
        match (desired.get(&key), observed.get(&key)) {
            (Some(want), None) => planner.add_service(want),
            (Some(want), Some(have)) => planner.update_service(want, &Observed::of(have)),
            (None, Some(have)) => {
                let period = owned.0.get(&key).copied().or(exclusive.then_some(Duration::ZERO));
                if let Some(period) = period {
                    planner.remove_service(&Observed::of(have), period);
                }
            }
            (None, None) => unreachable!("every key comes from one side"),
        }
    }
    planner.plan
}

/// A service in the kernel, its destinations by address (for plans that do not
/// depend on the dump's order). Made for one service at a time: a full round's
/// maps never exist at once.
struct Observed<'a> {
    service: &'a Service,
    destinations: BTreeMap<SocketAddr, &'a ObservedDestination>,
}

impl<'a> Observed<'a> {
    fn of(observed: &'a ObservedService) -> Self {
        let destinations = observed.destinations.iter().map(|d| (d.destination.address, d)).collect();
        Observed { service: &observed.service, destinations }
    }
}

struct Planner<'a> {
    now: Duration,
    /// The drains before this round.
    drains: &'a Drains,
    plan: Plan,
}

impl Planner<'_> {
    fn add_service(&mut self, want: &DesiredService) {
        let key = want.service.key;
        self.plan.owned.0.insert(key, want.drain);
        self.plan.ops.push(IpvsOp::AddService(want.service.clone()));
        self.plan.ops.extend(want.destinations.iter().map(|d| IpvsOp::AddDestination(key, *d)));
    }

    fn update_service(&mut self, want: &DesiredService, have: &Observed<'_>) {
        let key = want.service.key;
        self.plan.owned.0.insert(key, want.drain);
        if *have.service != want.service {
            self.plan.ops.push(IpvsOp::EditService(want.service.clone()));
        }

        let wanted: BTreeMap<_, _> = want.destinations.iter().map(|d| (d.address, d)).collect();
        for (address, entry) in &have.destinations {
            if !wanted.contains_key(address) {
                self.retire(key, entry, want.drain);
            }
        }
        for (address, destination) in wanted {
            match have.destinations.get(&address) {
                None => self.plan.ops.push(IpvsOp::AddDestination(key, *destination)),
                Some(current) if current.destination != *destination => {
                    self.plan.ops.push(IpvsOp::EditDestination(key, *destination))
                }
                Some(_) => {}
            }
        }
    }

    /// Drains the service's destinations; deletes it once none would be left.
    fn remove_service(&mut self, have: &Observed<'_>, period: Duration) {
        let key = have.service.key;
        let destinations = have.destinations.values();
        if destinations.clone().all(|entry| self.drain_start(key, entry, period).is_none()) {
            self.plan.ops.push(IpvsOp::DeleteService(key));
            return;
        }
        self.plan.owned.0.insert(key, period);
        for entry in destinations {
            self.retire(key, entry, period);
        }
    }

    /// Drains or deletes a destination that is no longer desired.
    fn retire(&mut self, key: ServiceKey, entry: &ObservedDestination, period: Duration) {
        let destination = &entry.destination;
        let Some(start) = self.drain_start(key, entry, period) else {
            self.plan.ops.push(IpvsOp::DeleteDestination(key, destination.address));
            return;
        };
        if destination.weight != 0 {
            self.plan.ops.push(IpvsOp::EditDestination(key, Destination { weight: 0, ..*destination }));
        }
        self.plan.drains.0.insert((key, destination.address), start);
        let end = start.saturating_add(period);
        self.plan.next_check = Some(self.plan.next_check.map_or(end, |next| next.min(end)));
    }

    /// When the drain of a destination that is no longer desired started, or None
    /// if it may be deleted now.
    fn drain_start(
        &self,
        key: ServiceKey,
        entry: &ObservedDestination,
        period: Duration,
    ) -> Option<Duration> {
        let connections = u64::from(entry.active_connections) + u64::from(entry.inactive_connections);
        if !waits_for_connections(&key) || connections == 0 {
            return None;
        }
        let start = self.drains.0.get(&(key, entry.destination.address)).copied().unwrap_or(self.now);
        (self.now < start.saturating_add(period)).then_some(start)
    }
}

/// Whether connections of the service end in a way worth waiting for: TCP and
/// SCTP do; fwmark services count as TCP.
pub fn waits_for_connections(key: &ServiceKey) -> bool {
    match key {
        ServiceKey::Address { protocol, .. } => matches!(protocol, Protocol::Tcp | Protocol::Sctp),
        ServiceKey::Fwmark { .. } => true,
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;
    use lvs_ipvs::{ForwardMethod, ServiceEntry, Stats};

    const NOW: Duration = Duration::from_secs(1_000);
    const DRAIN: Duration = Duration::from_secs(30);

    fn key(text: &str) -> ServiceKey {
        ServiceKey::tcp(text.parse().unwrap())
    }

    fn udp_key(text: &str) -> ServiceKey {
        ServiceKey::udp(text.parse().unwrap())
    }

    fn destination(address: &str, weight: u32) -> Destination {
        Destination::new(address.parse().unwrap(), ForwardMethod::DirectRoute, weight)
    }

    fn want(key: ServiceKey, destinations: &[Destination]) -> DesiredService {
        DesiredService {
            service: Service::new(key, "wlc"),
            destinations: destinations.to_vec(),
            drain: DRAIN,
        }
    }

    /// A destination in the kernel with this many active connections.
    fn busy(destination: Destination, active_connections: u32) -> DestinationEntry {
        DestinationEntry {
            destination,
            active_connections,
            inactive_connections: 0,
            persistent_connections: 0,
            stats: Stats::default(),
        }
    }

    fn kernel(service: Service, destinations: Vec<DestinationEntry>) -> TableEntry {
        (ServiceEntry { service, stats: Stats::default() }, destinations)
    }

    /// The kernel holding exactly `desired`, every destination with `connections`.
    fn kernel_of(desired: &DesiredService, connections: u32) -> TableEntry {
        let destinations = desired.destinations.iter().map(|d| busy(*d, connections)).collect();
        kernel(desired.service.clone(), destinations)
    }

    fn owning(keys: &[ServiceKey]) -> Ownership {
        Ownership(keys.iter().map(|k| (*k, DRAIN)).collect())
    }

    fn plan_now(
        desired: &[DesiredService],
        observed: &[TableEntry],
        owned: &Ownership,
        drains: &Drains,
    ) -> Plan {
        plan(desired, observed, owned, drains, NOW, false)
    }

    #[test]
    fn new_service_is_added_before_its_destinations_and_owned() {
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1), destination("10.1.0.2:80", 2)]);
        let plan = plan_now(std::slice::from_ref(&web), &[], &Ownership::default(), &Drains::default());
        assert_eq!(
            plan.ops,
            vec![
                IpvsOp::AddService(web.service.clone()),
                IpvsOp::AddDestination(web.service.key, web.destinations[0]),
                IpvsOp::AddDestination(web.service.key, web.destinations[1]),
            ]
        );
        assert_eq!(plan.owned, owning(&[web.service.key]));
        assert_eq!(plan.next_check, None);
    }

    #[test]
    fn matching_kernel_needs_nothing() {
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1)]);
        let plan = plan_now(
            std::slice::from_ref(&web),
            &[kernel_of(&web, 3)],
            &owning(&[web.service.key]),
            &Drains::default(),
        );
        assert_eq!(plan, Plan { owned: owning(&[web.service.key]), ..Plan::default() });
    }

    #[test]
    fn changed_service_and_destinations_are_edited_in_place() {
        let old = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1), destination("10.1.0.2:80", 1)]);
        let mut new = old.clone();
        new.service.scheduler = "wrr".into();
        new.destinations[0].weight = 5;
        new.destinations[1].forward = ForwardMethod::Tunnel;
        let plan = plan_now(
            std::slice::from_ref(&new),
            &[kernel_of(&old, 1)],
            &Ownership::default(),
            &Drains::default(),
        );
        assert_eq!(
            plan.ops,
            vec![
                IpvsOp::EditService(new.service.clone()),
                IpvsOp::EditDestination(new.service.key, new.destinations[0]),
                IpvsOp::EditDestination(new.service.key, new.destinations[1]),
            ]
        );
    }

    #[test]
    fn foreign_services_are_left_alone_unless_exclusive() {
        let foreign = want(key("10.0.0.9:80"), &[destination("10.1.0.1:80", 1)]);
        let observed = [kernel_of(&foreign, 1)];
        let plan_shared = plan(&[], &observed, &Ownership::default(), &Drains::default(), NOW, false);
        assert_eq!(plan_shared, Plan::default());
        let plan_exclusive = plan(&[], &observed, &Ownership::default(), &Drains::default(), NOW, true);
        assert_eq!(plan_exclusive.ops, vec![IpvsOp::DeleteService(foreign.service.key)]);
        assert_eq!(plan_exclusive.owned, Ownership::default());
    }

    #[test]
    fn owned_service_gone_from_the_kernel_is_forgotten() {
        let plan = plan_now(&[], &[], &owning(&[key("10.0.0.1:80")]), &Drains::default());
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn removed_udp_destination_is_deleted_at_once() {
        let dns =
            want(udp_key("10.0.0.1:53"), &[destination("10.1.0.1:53", 1), destination("10.1.0.2:53", 1)]);
        let kept = DesiredService { destinations: dns.destinations[..1].to_vec(), ..dns.clone() };
        let plan = plan_now(&[kept], &[kernel_of(&dns, 7)], &owning(&[dns.service.key]), &Drains::default());
        assert_eq!(plan.ops, vec![IpvsOp::DeleteDestination(dns.service.key, dns.destinations[1].address)]);
        assert_eq!(plan.drains, Drains::default());
    }

    #[test]
    fn removed_tcp_destination_drains_until_its_time() {
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1), destination("10.1.0.2:80", 3)]);
        let kept = DesiredService { destinations: web.destinations[..1].to_vec(), ..web.clone() };
        let owned = owning(&[web.service.key]);
        let gone = (web.service.key, web.destinations[1].address);

        let first = plan_now(std::slice::from_ref(&kept), &[kernel_of(&web, 2)], &owned, &Drains::default());
        let quiesced = Destination { weight: 0, ..web.destinations[1] };
        assert_eq!(first.ops, vec![IpvsOp::EditDestination(web.service.key, quiesced)]);
        assert_eq!(first.drains, Drains([(gone, NOW)].into()));
        assert_eq!(first.next_check, Some(NOW + DRAIN));

        // Still busy and within its period: nothing to do, the drain goes on.
        let draining = [kernel(web.service.clone(), vec![busy(web.destinations[0], 2), busy(quiesced, 2)])];
        let later =
            plan(std::slice::from_ref(&kept), &draining, &owned, &first.drains, NOW + DRAIN / 2, false);
        assert_eq!(later.ops, vec![]);
        assert_eq!((later.drains.clone(), later.next_check), (first.drains.clone(), Some(NOW + DRAIN)));

        // The period is over.
        let over = plan(std::slice::from_ref(&kept), &draining, &owned, &first.drains, NOW + DRAIN, false);
        assert_eq!(over.ops, vec![IpvsOp::DeleteDestination(gone.0, gone.1)]);
        assert_eq!((over.drains, over.next_check), (Drains::default(), None));

        // Its connections are gone.
        let idle = [kernel(web.service.clone(), vec![busy(web.destinations[0], 2), busy(quiesced, 0)])];
        let closed = plan(&[kept], &idle, &owned, &first.drains, NOW + DRAIN / 2, false);
        assert_eq!(closed.ops, vec![IpvsOp::DeleteDestination(gone.0, gone.1)]);
    }

    #[test]
    fn idle_or_undrained_destination_is_deleted_at_once() {
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1)]);
        let none = DesiredService { destinations: vec![], ..web.clone() };
        let deleted = vec![IpvsOp::DeleteDestination(web.service.key, web.destinations[0].address)];
        let owned = owning(&[web.service.key]);
        assert_eq!(
            plan_now(std::slice::from_ref(&none), &[kernel_of(&web, 0)], &owned, &Drains::default()).ops,
            deleted
        );
        let no_drain = DesiredService { drain: Duration::ZERO, ..none };
        assert_eq!(plan_now(&[no_drain], &[kernel_of(&web, 5)], &owned, &Drains::default()).ops, deleted);
    }

    #[test]
    fn destination_back_while_draining_gets_its_weight_again() {
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 4)]);
        let quiesced = Destination { weight: 0, ..web.destinations[0] };
        let draining = Drains([((web.service.key, quiesced.address), NOW - DRAIN / 2)].into());
        let observed = [kernel(web.service.clone(), vec![busy(quiesced, 3)])];
        let plan = plan_now(std::slice::from_ref(&web), &observed, &owning(&[web.service.key]), &draining);
        assert_eq!(plan.ops, vec![IpvsOp::EditDestination(web.service.key, web.destinations[0])]);
        assert_eq!((plan.drains, plan.next_check), (Drains::default(), None));
    }

    #[test]
    fn removed_tcp_service_drains_then_goes() {
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1), destination("10.1.0.2:80", 1)]);
        let owned = owning(&[web.service.key]);
        let [busy_one, idle_one] = [web.destinations[0], web.destinations[1]];
        let observed = [kernel(web.service.clone(), vec![busy(busy_one, 4), busy(idle_one, 0)])];

        let first = plan_now(&[], &observed, &owned, &Drains::default());
        let quiesced = Destination { weight: 0, ..busy_one };
        assert_eq!(
            first.ops,
            vec![
                IpvsOp::EditDestination(web.service.key, quiesced),
                IpvsOp::DeleteDestination(web.service.key, idle_one.address),
            ]
        );
        assert_eq!(first.owned, owned, "kept while its destinations drain");
        assert_eq!(first.next_check, Some(NOW + DRAIN));

        let draining = [kernel(web.service.clone(), vec![busy(quiesced, 4)])];
        let over = plan(&[], &draining, &first.owned, &first.drains, NOW + DRAIN, false);
        assert_eq!(over.ops, vec![IpvsOp::DeleteService(web.service.key)]);
        assert_eq!((over.owned, over.drains), (Ownership::default(), Drains::default()));
    }

    #[test]
    fn removed_udp_or_idle_service_is_deleted_at_once() {
        let dns = want(udp_key("10.0.0.1:53"), &[destination("10.1.0.1:53", 1)]);
        let web = want(key("10.0.0.1:80"), &[destination("10.1.0.1:80", 1)]);
        let observed = [kernel_of(&dns, 9), kernel_of(&web, 0)];
        let plan = plan_now(&[], &observed, &owning(&[dns.service.key, web.service.key]), &Drains::default());
        assert_eq!(
            plan.ops,
            vec![IpvsOp::DeleteService(web.service.key), IpvsOp::DeleteService(dns.service.key)]
        );
        assert_eq!(plan.owned, Ownership::default());
    }

    #[test]
    fn fwmark_services_drain_like_tcp() {
        let mark = ServiceKey::Fwmark { family: lvs_ipvs::AddressFamily::Ipv4, mark: 3 };
        assert!(waits_for_connections(&mark));
        assert!(waits_for_connections(&ServiceKey::Address {
            protocol: Protocol::Sctp,
            address: "10.0.0.1:80".parse().unwrap()
        }));
        assert!(!waits_for_connections(&udp_key("10.0.0.1:53")));
    }
}
