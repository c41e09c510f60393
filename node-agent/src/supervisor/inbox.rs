//! The loop's inbox: every input of the agent's loop, coalesced where it
//! arrives. What it holds is bounded by what the agent tracks (one pending
//! update of the desired state, one verdict per health-checked destination, one
//! transition per VRRP instance), not by how fast inputs come while a round
//! runs: a flood of VRRP adverts, a flapping real server or a burst of LvsNode
//! versions during a slow round cost the same memory as one of each.
//!
//! Coalescing keeps what the loop would have done with the inputs one by one:
//! - Desired: updates are merged ([`Coalesce`]); a source of whole versions
//!   keeps the newest.
//! - Health: the newest verdict per (service, destination): the loop only
//!   records verdicts, so the last one is what it would have kept.
//! - VRRP: the newest transition per instance: acting on a transition depends
//!   on its `from` and `to` only, and the last one decides where the VIP ends.
//! - Dumped and Stop are flags.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lvs_health::HealthChange;
use lvs_ipvs::ServiceKey;
use lvs_vrrp::InstanceKey;

use super::Input;
use crate::failover::Transition;

/// An update of the desired state that can take a newer one in, so that two
/// pending updates are one.
pub trait Coalesce {
    /// Makes `self` (older) the effect of applying `self` then `newer`.
    fn absorb(&mut self, newer: Self);
}

/// The loop side.
pub struct Inbox<U> {
    shared: Arc<Shared<U>>,
}

/// The sources' side; each clone is one source. The inbox is disconnected when
/// the last one is dropped.
pub struct InboxSender<U> {
    shared: Arc<Shared<U>>,
}

/// The loop is gone: nothing sent is read any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the agent's loop has stopped")]
pub struct Closed;

/// Every source is gone and nothing is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every input source has stopped")]
pub struct Disconnected;

struct Shared<U> {
    pending: Mutex<Pending<U>>,
    arrived: Condvar,
}

/// What the loop takes in one turn: everything pending, coalesced.
#[derive(Debug)]
pub struct Batch<U> {
    pub desired: Option<U>,
    pub health: Vec<HealthChange>,
    pub vrrp: Vec<Transition>,
    pub dumped: bool,
    pub stop: bool,
}

impl<U> Batch<U> {
    pub fn is_empty(&self) -> bool {
        self.desired.is_none() && self.health.is_empty() && self.vrrp.is_empty() && !self.dumped && !self.stop
    }
}

struct Pending<U> {
    desired: Option<U>,
    health: HashMap<(ServiceKey, SocketAddr), HealthChange>,
    /// In the order the instances were first heard of.
    vrrp: Vec<Transition>,
    vrrp_index: HashMap<InstanceKey, usize>,
    dumped: bool,
    stop: bool,
    senders: usize,
    loop_alive: bool,
}

impl<U> Pending<U> {
    fn is_empty(&self) -> bool {
        self.desired.is_none() && self.health.is_empty() && self.vrrp.is_empty() && !self.dumped && !self.stop
    }

    fn take(&mut self) -> Batch<U> {
        self.vrrp_index.clear();
        Batch {
            desired: self.desired.take(),
            health: self.health.drain().map(|(_, change)| change).collect(),
            vrrp: std::mem::take(&mut self.vrrp),
            dumped: std::mem::take(&mut self.dumped),
            stop: std::mem::take(&mut self.stop),
        }
    }
}

/// A new inbox and its first sender.
pub fn inbox<U>() -> (InboxSender<U>, Inbox<U>) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            desired: None,
            health: HashMap::new(),
            vrrp: Vec::new(),
            vrrp_index: HashMap::new(),
            dumped: false,
            stop: false,
            senders: 1,
            loop_alive: true,
        }),
        arrived: Condvar::new(),
    });
    (InboxSender { shared: Arc::clone(&shared) }, Inbox { shared })
}

impl<U> Shared<U> {
    /// A panic while holding the lock leaves plain data behind: go on with it.
    fn lock(&self) -> MutexGuard<'_, Pending<U>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<U: Coalesce> InboxSender<U> {
    pub fn send(&self, input: Input<U>) -> Result<(), Closed> {
        let mut pending = self.shared.lock();
        if !pending.loop_alive {
            return Err(Closed);
        }
        match input {
            Input::Desired(update) => match &mut pending.desired {
                Some(older) => older.absorb(update),
                None => pending.desired = Some(update),
            },
            Input::Health(change) => {
                pending.health.insert((change.service, change.destination), change);
            }
            Input::Vrrp(transition) => {
                let key = transition.instance.key();
                match pending.vrrp_index.get(&key) {
                    Some(&at) => pending.vrrp[at] = transition,
                    None => {
                        let at = pending.vrrp.len();
                        pending.vrrp.push(transition);
                        pending.vrrp_index.insert(key, at);
                    }
                }
            }
            Input::Dumped => pending.dumped = true,
            Input::Stop => pending.stop = true,
        }
        drop(pending);
        self.shared.arrived.notify_one();
        Ok(())
    }
}

impl<U> Clone for InboxSender<U> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        InboxSender { shared: Arc::clone(&self.shared) }
    }
}

impl<U> Drop for InboxSender<U> {
    fn drop(&mut self) {
        self.shared.lock().senders -= 1;
        self.shared.arrived.notify_one();
    }
}

impl<U> Inbox<U> {
    /// Everything pending, waiting for something up to `timeout` (`None`: as long
    /// as it takes). An empty batch means the time ran out.
    pub fn take(&self, timeout: Option<Duration>) -> Result<Batch<U>, Disconnected> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pending = self.shared.lock();
        loop {
            if !pending.is_empty() {
                return Ok(pending.take());
            }
            if pending.senders == 0 {
                return Err(Disconnected);
            }
            pending = match deadline {
                None => self.shared.arrived.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(pending.take());
                    }
                    self.shared
                        .arrived
                        .wait_timeout(pending, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Everything pending now, without waiting.
    pub fn take_now(&self) -> Batch<U> {
        self.shared.lock().take()
    }
}

impl<U> Drop for Inbox<U> {
    fn drop(&mut self) {
        let mut pending = self.shared.lock();
        pending.loop_alive = false;
        // What was pending is never read: let it go now, not with the last sender.
        pending.take();
    }
}

/// Sources of whole versions (cluster mode's LvsNode watch): the newest wins.
impl<T> Coalesce for Arc<T> {
    fn absorb(&mut self, newer: Self) {
        *self = newer;
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use lvs_vrrp::{AddressFamily, InstanceConfig, VrrpState};

    use super::*;
    use crate::failover::Transition;

    fn health(port: u16, healthy: bool) -> HealthChange {
        HealthChange {
            service: ServiceKey::tcp("192.0.2.1:80".parse().unwrap()),
            destination: SocketAddr::new("10.0.0.1".parse().unwrap(), port),
            healthy,
            reason: format!("probe {healthy}"),
        }
    }

    fn transition(vrid: u8, from: VrrpState, to: VrrpState) -> Transition {
        let address: IpAddr = format!("192.0.2.{vrid}").parse().unwrap();
        Transition {
            instance: InstanceConfig {
                interface: "eth0".into(),
                vrid,
                family: AddressFamily::IPv4,
                priority: 100,
                advert_interval: Duration::from_secs(1),
                preempt: true,
                addresses: vec![address],
            },
            from,
            to,
        }
    }

    #[test]
    fn a_flood_of_inputs_holds_one_of_each_kind_per_subject() {
        let (sender, inbox) = inbox::<Arc<u32>>();
        for round in 0..100_000u32 {
            sender.send(Input::Desired(Arc::new(round))).unwrap();
            sender.send(Input::Health(health(8000 + (round % 10) as u16, round % 2 == 0))).unwrap();
            let (from, to) = if round % 2 == 0 {
                (VrrpState::Backup, VrrpState::Master)
            } else {
                (VrrpState::Master, VrrpState::Backup)
            };
            sender.send(Input::Vrrp(transition(1 + (round % 3) as u8, from, to))).unwrap();
        }
        let batch = inbox.take(Some(Duration::ZERO)).unwrap();
        assert_eq!(batch.desired.as_deref(), Some(&99_999), "the newest version");
        assert_eq!(batch.health.len(), 10, "one verdict per destination");
        for change in &batch.health {
            let last_round_of_port = 99_990 + u32::from(change.destination.port() - 8000);
            assert_eq!(change.healthy, last_round_of_port % 2 == 0, "{change:?}");
        }
        let vrids: Vec<u8> = batch.vrrp.iter().map(|t| t.instance.vrid).collect();
        assert_eq!(vrids, [1, 2, 3], "one transition per instance, in the order first heard");
        let last = batch.vrrp.iter().find(|t| t.instance.vrid == 1).unwrap();
        // Round 99,999 is the last of vrid 1 (99,999 % 3 == 0): odd, Master -> Backup.
        assert_eq!((last.from, last.to), (VrrpState::Master, VrrpState::Backup));
        assert!(inbox.take(Some(Duration::ZERO)).unwrap().is_empty(), "taken once");
    }

    #[test]
    fn flags_wait_and_timeouts() {
        let (sender, inbox) = inbox::<Arc<u32>>();
        let started = Instant::now();
        assert!(inbox.take(Some(Duration::from_millis(50))).unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));

        let other = sender.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.send(Input::Dumped).unwrap();
            other.send(Input::Stop).unwrap();
        });
        let mut batch = inbox.take(None).unwrap();
        waker.join().unwrap();
        if !batch.stop {
            batch = inbox.take(None).unwrap(); // woken between the two sends
        }
        assert!(batch.stop);
    }

    #[test]
    fn the_last_sender_gone_disconnects_after_what_is_pending() {
        let (sender, inbox) = inbox::<Arc<u32>>();
        sender.send(Input::Desired(Arc::new(7))).unwrap();
        drop(sender);
        assert_eq!(inbox.take(None).unwrap().desired.as_deref(), Some(&7));
        assert_eq!(inbox.take(None).unwrap_err(), Disconnected);
    }

    #[test]
    fn sending_to_a_stopped_loop_fails_and_holds_nothing() {
        let (sender, inbox) = inbox::<Arc<Vec<u8>>>();
        let big = Arc::new(vec![0u8; 1 << 20]);
        sender.send(Input::Desired(Arc::clone(&big))).unwrap();
        drop(inbox);
        assert_eq!(Arc::strong_count(&big), 1, "the pending version let go with the loop");
        assert_eq!(sender.send(Input::Desired(big)), Err(Closed));
    }
}
