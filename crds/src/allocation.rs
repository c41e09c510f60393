//! VIP allocation from [`VipPool`]s: which address each claim (a
//! VirtualService, a Service of type LoadBalancer, one claim per address
//! family) holds. Pure and deterministic: the same pools, namespaces and
//! claims, in any order, give the same answer.
//!
//! Order of service, each step oldest claim first (creationTimestamp, then
//! kind/namespace/name; claims without a timestamp count as the newest):
//! 1. previous allocations (the address the owner's status records, read
//!    back), while they still lie in a pool that admits the claim: an
//!    allocation survives controller restarts and leader changes, and a
//!    newer request never takes an address from its holder;
//! 2. requested addresses (`spec.vip`, `loadBalancerIP`): must lie in an
//!    admitting pool (the requested one, if any), not be reserved, and be
//!    free (or shared on other ports in a pool that allows sharing);
//! 3. the rest get the lowest free address of the requested pool, else of
//!    the first admitting pool with `autoAssign` (by pool name) that has one.
//!
//! An address is never handed out twice, even where pools overlap: the
//! holders are tracked per address, not per pool. A previous allocation
//! that no admitting pool contains any more (the pool shrank, or stopped
//! admitting the namespace) is released: the claim is served again as if
//! new, and its outcome names the released address.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time};

use crate::{
    ValidationError,
    vip_pool::{AddressRange, VipPool, from_number, to_number},
    virtual_service::{AddressFamily, Protocol},
};

/// Who claims an address: the kind keeps a Service and a VirtualService of
/// one name apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One owner's claim on an address of one family.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub owner: Owner,
    /// The owner's creationTimestamp: the older claim wins.
    pub created: Option<Time>,
    pub family: AddressFamily,
    /// An address asked for by name.
    pub requested: Option<IpAddr>,
    /// A pool asked for by name.
    pub pool: Option<String>,
    /// The address the owner's status records from an earlier allocation.
    pub previous: Option<IpAddr>,
    /// The pool the owner's status records with it: of overlapping pools
    /// that contain the address, it stays in this one.
    pub previous_pool: Option<String>,
    /// The (port, protocol) pairs it serves on the address; port 0 is every
    /// port. Claims may share an address only on pairs that do not overlap.
    pub ports: Vec<(u16, Protocol)>,
}

/// A claim's identity in the outcome: one owner may claim one address per family.
pub type ClaimId = (Owner, AddressFamily);

/// An address that no pool hands out, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub range: AddressRange,
    /// e.g. `the address of node lvs1`, `the Service CIDR 10.96.0.0/12`.
    pub what: String,
}

impl Reservation {
    pub fn address(address: IpAddr, what: impl Into<String>) -> Self {
        Self { range: AddressRange::single(address), what: what.into() }
    }

    pub fn net(net: &ipnet::IpNet, what: impl Into<String>) -> Self {
        Self { range: AddressRange::of_net(&net.trunc()), what: what.into() }
    }
}

/// An address given to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    pub address: IpAddr,
    /// The pool it was given from (of overlapping pools, the first admitting
    /// one by name).
    pub pool: String,
    /// The previous allocation, when it was released because no admitting
    /// pool contains it any more.
    pub released: Option<IpAddr>,
}

/// Why a claim got no address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No pool admits the namespace.
    NoPool { namespace: String },
    /// The requested pool does not exist.
    PoolNotFound { pool: String },
    /// The requested pool does not admit the namespace.
    PoolNotAdmitted { pool: String, namespace: String },
    /// The requested address lies in no pool that admits the namespace (and
    /// is the requested pool, if any).
    NotInPool { address: IpAddr, namespace: String, pools: Vec<String> },
    /// The requested address is reserved.
    Reserved { address: IpAddr, what: String },
    /// The requested address is held by an older claim (or its previous
    /// holder), on overlapping ports or in a pool that does not share.
    InUse { address: IpAddr, holder: Owner, same_ports: bool },
    /// Admitting pools exist, but none assigns automatically: the claim
    /// must name a pool or an address.
    NoAutoAssign { namespace: String },
    /// Every candidate pool is full (for this family).
    Exhausted { family: AddressFamily, pools: Vec<String> },
}

impl Refusal {
    /// A condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoPool { .. } => "NoPool",
            Refusal::PoolNotFound { .. } => "PoolNotFound",
            Refusal::PoolNotAdmitted { .. } => "PoolNotAdmitted",
            Refusal::NotInPool { .. } => "VipNotInPool",
            Refusal::Reserved { .. } => "VipReserved",
            Refusal::InUse { .. } => "VipInUse",
            Refusal::NoAutoAssign { .. } => "NoAutoAssign",
            Refusal::Exhausted { .. } => "PoolExhausted",
        }
    }

    /// A condition message.
    pub fn message(&self) -> String {
        match self {
            Refusal::NoPool { namespace } => format!("no VipPool admits namespace {namespace}"),
            Refusal::PoolNotFound { pool } => format!("VipPool {pool} does not exist"),
            Refusal::PoolNotAdmitted { pool, namespace } => {
                format!("VipPool {pool} does not admit namespace {namespace}")
            }
            Refusal::NotInPool { address, namespace, pools } => format!(
                "vip {address} lies in no VipPool that admits namespace {namespace} (admitting: {})",
                pools.join(", ")
            ),
            Refusal::Reserved { address, what } => format!("vip {address} is reserved: {what}"),
            Refusal::InUse { address, holder, same_ports: true } => {
                format!("vip {address} is already used on the same ports by {holder}")
            }
            Refusal::InUse { address, holder, same_ports: false } => {
                format!("vip {address} is already used by {holder}, and its pool does not share addresses")
            }
            Refusal::NoAutoAssign { namespace } => format!(
                "no VipPool admitting namespace {namespace} assigns addresses automatically: name a pool or a vip"
            ),
            Refusal::Exhausted { family, pools } => {
                format!("no free {family:?} address in VipPool {}", pools.join(", "))
            }
        }
    }
}

/// A pool's count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Addresses of the pool held by claims.
    pub used: u64,
    /// Addresses of the pool still free (reserved ones left out), at most `i64::MAX`.
    pub free: u64,
    /// The pool's entries that do not parse (the others are used).
    pub errors: Vec<ValidationError>,
}

/// The outcome of [`allocate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allocation {
    pub outcomes: BTreeMap<ClaimId, Result<Allocated, Refusal>>,
    /// By pool name.
    pub pools: BTreeMap<String, PoolUsage>,
}

/// A pool, parsed: its addresses without the reserved ones, merged, per family.
struct Pool<'a> {
    name: &'a str,
    spec: &'a crate::vip_pool::VipPoolSpec,
    ranges: Vec<AddressRange>,
    /// Its raw ranges, to tell a reserved address from one outside the pool.
    raw: Vec<AddressRange>,
    errors: Vec<ValidationError>,
}

/// Who holds an address, and on which ports.
struct Holder {
    owner: Owner,
    ports: Vec<(u16, Protocol)>,
    shares: bool,
}

/// Allocate addresses to `claims` from `pools` (see the module's doc).
/// Claims must be unique by [`ClaimId`]; of duplicates the last one counts.
pub fn allocate(
    pools: &[VipPool],
    namespaces: &[Namespace],
    reservations: &[Reservation],
    claims: &[Claim],
) -> Allocation {
    let mut pools: Vec<Pool<'_>> = pools.iter().map(|pool| Pool::new(pool, reservations)).collect();
    pools.sort_by(|a, b| a.name.cmp(b.name));
    let labels: HashMap<&str, BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| {
            (n.metadata.name.as_deref().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default())
        })
        .collect();
    let no_labels = BTreeMap::new();

    let mut by_age: Vec<&Claim> = claims.iter().collect();
    by_age.sort_by(|a, b| age(a).cmp(&age(b)));

    let mut state = State { holders: HashMap::new(), used: BTreeMap::new(), hints: HashMap::new() };
    let mut outcomes: BTreeMap<ClaimId, Result<Allocated, Refusal>> = BTreeMap::new();
    let admitting = |claim: &Claim| -> Vec<usize> {
        let labels = labels.get(claim.owner.namespace.as_str()).unwrap_or(&no_labels);
        (0..pools.len())
            .filter(|&i| pools[i].spec.admits(&claim.owner.namespace, labels))
            .filter(|&i| claim.pool.as_deref().is_none_or(|name| name == pools[i].name))
            .collect()
    };

    // 1. Previous allocations that still lie in an admitting pool.
    let mut released: HashMap<ClaimId, IpAddr> = HashMap::new();
    for claim in &by_age {
        let Some(previous) = claim.previous.filter(|p| AddressFamily::from(*p) == claim.family) else {
            continue;
        };
        if claim.requested.is_some_and(|requested| requested != previous) {
            continue; // the request changed: served as a request
        }
        let mut admitting = admitting(claim);
        // Its earlier pool first, if it still holds the address.
        admitting.sort_by_key(|&i| Some(pools[i].name) != claim.previous_pool.as_deref());
        match admitting.iter().find(|&&i| pools[i].contains(previous)) {
            Some(&i) => {
                if state.take(previous, &pools[i], claim).is_ok() {
                    outcomes.insert(id(claim), Ok(allocated(previous, &pools[i], None)));
                }
            }
            None => drop(released.insert(id(claim), previous)),
        }
    }

    // 2. Requested addresses; 3. the rest, from the pools.
    let requests = by_age.iter().filter(|c| c.requested.is_some());
    let rest = by_age.iter().filter(|c| c.requested.is_none());
    for claim in requests.chain(rest) {
        let key = id(claim);
        if outcomes.contains_key(&key) {
            continue;
        }
        let released = released.get(&key).copied();
        let outcome = serve(claim, &admitting(claim), &pools, reservations, &mut state)
            .map(|(address, pool)| allocated(address, &pools[pool], released));
        outcomes.insert(key, outcome);
    }

    let usage = pools
        .iter()
        .map(|pool| {
            let used: u128 = pool
                .ranges
                .iter()
                .map(|r| state.used.get(&r.family).map_or(0, |u| u.range(r.first..=r.last).count() as u128))
                .sum();
            let size: u128 = pool.ranges.iter().map(AddressRange::size).sum();
            let cap = |n: u128| n.min(i64::MAX as u128) as u64;
            (
                pool.name.to_owned(),
                PoolUsage { used: cap(used), free: cap(size - used), errors: pool.errors.clone() },
            )
        })
        .collect();
    Allocation { outcomes, pools: usage }
}

fn id(claim: &Claim) -> ClaimId {
    (claim.owner.clone(), claim.family)
}

fn age(claim: &Claim) -> impl Ord + '_ {
    (claim.created.is_none(), claim.created.as_ref(), &claim.owner, claim.family)
}

fn allocated(address: IpAddr, pool: &Pool<'_>, released: Option<IpAddr>) -> Allocated {
    Allocated { address, pool: pool.name.to_owned(), released }
}

/// A requested address, or the lowest free one: (address, pool index).
fn serve(
    claim: &Claim,
    admitting: &[usize],
    pools: &[Pool<'_>],
    reservations: &[Reservation],
    state: &mut State,
) -> Result<(IpAddr, usize), Refusal> {
    let namespace = claim.owner.namespace.clone();
    if let Some(name) = &claim.pool
        && admitting.is_empty()
    {
        return Err(match pools.iter().any(|p| p.name == name) {
            true => Refusal::PoolNotAdmitted { pool: name.clone(), namespace },
            false => Refusal::PoolNotFound { pool: name.clone() },
        });
    }
    if admitting.is_empty() {
        return Err(Refusal::NoPool { namespace });
    }
    if let Some(address) = claim.requested {
        if let Some(&i) = admitting.iter().find(|&&i| pools[i].contains(address)) {
            return state.take(address, &pools[i], claim).map(|()| (address, i));
        }
        if admitting.iter().any(|&i| pools[i].raw.iter().any(|r| r.contains(address)))
            && let Some(reservation) = reservations.iter().find(|r| r.range.contains(address))
        {
            return Err(Refusal::Reserved { address, what: reservation.what.clone() });
        }
        let pools = admitting.iter().map(|&i| pools[i].name.to_owned()).collect();
        return Err(Refusal::NotInPool { address, namespace, pools });
    }
    let candidates: Vec<usize> = match claim.pool {
        Some(_) => admitting.to_vec(),
        None => admitting.iter().copied().filter(|&i| pools[i].spec.auto_assign).collect(),
    };
    if candidates.is_empty() {
        return Err(Refusal::NoAutoAssign { namespace });
    }
    for &i in &candidates {
        if let Some(address) = state.first_free(i, &pools[i], claim.family) {
            state.take(address, &pools[i], claim).expect("a free address can be taken");
            return Ok((address, i));
        }
    }
    let pools = candidates.iter().map(|&i| pools[i].name.to_owned()).collect();
    Err(Refusal::Exhausted { family: claim.family, pools })
}

struct State {
    holders: HashMap<IpAddr, Vec<Holder>>,
    /// Every held address as a number, per family.
    used: BTreeMap<AddressFamily, BTreeSet<u128>>,
    /// (pool, range) -> a number below which the range has no free address.
    hints: HashMap<(usize, usize), u128>,
}

impl State {
    /// Hold `address` for `claim`, unless an earlier holder keeps it.
    fn take(&mut self, address: IpAddr, pool: &Pool<'_>, claim: &Claim) -> Result<(), Refusal> {
        let shares = pool.spec.allow_shared_vip;
        let holders = self.holders.entry(address).or_default();
        let others = || holders.iter().filter(|h| h.owner != claim.owner);
        // The holder to name: one on the same ports, else the first.
        let overlapping = others().find(|h| overlap(&h.ports, &claim.ports));
        if let Some(holder) = overlapping.or_else(|| others().next()) {
            let same_ports = overlapping.is_some();
            if same_ports || !shares || !others().all(|h| h.shares) {
                return Err(Refusal::InUse { address, holder: holder.owner.clone(), same_ports });
            }
        }
        holders.push(Holder { owner: claim.owner.clone(), ports: claim.ports.clone(), shares });
        self.used.entry(address.into()).or_default().insert(to_number(address));
        Ok(())
    }

    /// The lowest address of pool `index` of `family` that nobody holds.
    fn first_free(&mut self, index: usize, pool: &Pool<'_>, family: AddressFamily) -> Option<IpAddr> {
        let used = self.used.entry(family).or_default();
        for (r, range) in pool.ranges.iter().enumerate().filter(|(_, r)| r.family == family) {
            let hint = self.hints.entry((index, r)).or_insert(range.first);
            let mut candidate = (*hint).max(range.first);
            if candidate > range.last {
                continue;
            }
            for &held in used.range(candidate..=range.last) {
                if held != candidate {
                    break;
                }
                candidate = candidate.checked_add(1)?;
            }
            *hint = candidate;
            if candidate <= range.last {
                return Some(from_number(family, candidate));
            }
        }
        None
    }
}

/// Whether two claims' (port, protocol) pairs meet (port 0 is every port).
fn overlap(a: &[(u16, Protocol)], b: &[(u16, Protocol)]) -> bool {
    a.iter().any(|&(pa, qa)| b.iter().any(|&(pb, qb)| qa == qb && (pa == pb || pa == 0 || pb == 0)))
}

impl<'a> Pool<'a> {
    fn new(pool: &'a VipPool, reservations: &[Reservation]) -> Self {
        let (raw, errors) = match pool.spec.ranges() {
            Ok(ranges) => (ranges, Vec::new()),
            Err(errors) => {
                // The entries that parse are used; the others are reported.
                let good = pool.spec.addresses.iter().filter_map(|a| {
                    let one =
                        crate::vip_pool::VipPoolSpec { addresses: vec![a.clone()], ..pool.spec.clone() };
                    one.ranges().ok()
                });
                (good.flatten().collect(), errors)
            }
        };
        let ranges = subtract(merge(raw.clone()), reservations);
        Pool {
            name: pool.metadata.name.as_deref().unwrap_or_default(),
            spec: &pool.spec,
            ranges,
            raw,
            errors,
        }
    }

    fn contains(&self, address: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(address))
    }
}

/// Sorted, overlapping and adjacent intervals joined.
fn merge(mut ranges: Vec<AddressRange>) -> Vec<AddressRange> {
    ranges.sort();
    let mut merged: Vec<AddressRange> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.family == range.family && range.first <= last.last.saturating_add(1) => {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// `ranges` (merged) without the reserved addresses.
fn subtract(ranges: Vec<AddressRange>, reservations: &[Reservation]) -> Vec<AddressRange> {
    let holes = merge(reservations.iter().map(|r| r.range).collect());
    let mut out = Vec::new();
    for range in ranges {
        let mut start = range.first;
        let mut open = true;
        for hole in holes
            .iter()
            .filter(|h| h.family == range.family && h.last >= range.first && h.first <= range.last)
        {
            if hole.first > start {
                out.push(AddressRange { last: hole.first - 1, first: start, ..range });
            }
            match hole.last.checked_add(1) {
                Some(next) => start = start.max(next),
                None => open = false,
            }
        }
        if open && start <= range.last {
            out.push(AddressRange { first: start, ..range });
        }
    }
    out
}
