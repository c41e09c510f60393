//! The state machine of one VRRP version 3 virtual router (RFC 5798 section
//! 6.4), as a pure type: no IO and no clock. The caller passes the time of each
//! event, performs the returned [`Action`]s and wakes the machine at
//! [`Machine::next_deadline`].
//!
//! Not modelled, on purpose: priority 255 (the address owner; directors hold
//! VIPs that are no interface's own address) and Accept_Mode (the VIPs are
//! ordinary local addresses on the master).

use std::{net::IpAddr, time::Duration};

use tokio::time::Instant;

/// The state of an instance (RFC 5798 section 6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VrrpState {
    Initialize,
    Backup,
    Master,
}

/// The shortest and longest advertisement intervals: the 12-bit field counts
/// centiseconds.
pub(crate) const MIN_ADVERT_INTERVAL: Duration = Duration::from_millis(10);
pub(crate) const MAX_ADVERT_INTERVAL: Duration = Duration::from_millis(40_950);

/// What one virtual router is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub virtual_router_id: u8,
    /// 1-254.
    pub priority: u8,
    /// Advertisement_Interval, a whole number of centiseconds from 10 ms to 40.95 s.
    pub advert_interval: Duration,
    /// Preempt_Mode: whether this router takes over from a lower-priority master.
    pub preempt: bool,
}

/// Why a [`Config`] is refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigError {
    #[error("VRRP virtual router id 0: must be 1-255")]
    VirtualRouterId,
    #[error("VRRP priority {priority} of virtual router {vrid}: must be 1-254")]
    Priority { vrid: u8, priority: u8 },
    #[error(
        "VRRP advertisement interval {interval:?} of virtual router {vrid}: must be a multiple of 10 ms from 10 ms to 40.95 s"
    )]
    AdvertInterval { vrid: u8, interval: Duration },
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let vrid = self.virtual_router_id;
        if vrid == 0 {
            return Err(ConfigError::VirtualRouterId);
        }
        if !(1..=254).contains(&self.priority) {
            return Err(ConfigError::Priority { vrid, priority: self.priority });
        }
        let interval = self.advert_interval;
        if !(MIN_ADVERT_INTERVAL..=MAX_ADVERT_INTERVAL).contains(&interval)
            || !interval.as_nanos().is_multiple_of(MIN_ADVERT_INTERVAL.as_nanos())
        {
            return Err(ConfigError::AdvertInterval { vrid, interval });
        }
        Ok(())
    }

    /// The interval as the advertisement carries it: centiseconds.
    pub(crate) fn advert_interval_centiseconds(&self) -> u16 {
        u16::try_from(self.advert_interval.as_millis() / 10).unwrap_or(u16::MAX)
    }
}

/// What the caller must do after an event, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send an advertisement with this priority (0 when giving up mastership)
    /// and this router's interval.
    SendAdvert { priority: u8 },
    /// The router became Master: take the addresses and announce them.
    BecomeMaster,
    /// The router became Backup: release the addresses.
    BecomeBackup,
}

/// The timer running in each state: the RFC's Master_Down_Timer (Backup) or
/// Adver_Timer (Master).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    None,
    MasterDown(Instant),
    Adver(Instant),
}

/// One virtual router's protocol state.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    config: Config,
    /// This router's primary address on the interface, for the tie-break of
    /// equal priorities.
    own_address: IpAddr,
    state: VrrpState,
    /// Master_Adver_Interval: learned from the master's advertisements.
    master_adver_interval: Duration,
    timer: Timer,
}

impl Machine {
    /// A machine in state Initialize; call [`Machine::startup`] to run it.
    pub(crate) fn new(config: Config, own_address: IpAddr) -> Self {
        Machine {
            config,
            own_address,
            state: VrrpState::Initialize,
            master_adver_interval: config.advert_interval,
            timer: Timer::None,
        }
    }

    pub(crate) fn state(&self) -> VrrpState {
        self.state
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// A new primary address (the interface was recreated), for the
    /// tie-break of equal priorities.
    pub(crate) fn set_own_address(&mut self, own_address: IpAddr) {
        self.own_address = own_address;
    }

    #[cfg(test)]
    fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256.
    pub(crate) fn skew_time(&self) -> Duration {
        self.master_adver_interval * (256 - u32::from(self.config.priority)) / 256
    }

    /// Master_Down_Interval = (3 * Master_Adver_Interval) + Skew_Time.
    pub(crate) fn master_down_interval(&self) -> Duration {
        self.master_adver_interval * 3 + self.skew_time()
    }

    /// When [`Machine::on_timer`] must be called next; None while Initialize.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.timer {
            Timer::None => None,
            Timer::MasterDown(at) | Timer::Adver(at) => Some(at),
        }
    }

    /// Startup event: Initialize -> Backup with the Master_Down_Timer running
    /// (priorities below 255 never start as Master).
    pub(crate) fn startup(&mut self, now: Instant) -> Vec<Action> {
        if self.state != VrrpState::Initialize {
            return Vec::new();
        }
        self.master_adver_interval = self.config.advert_interval;
        self.become_backup(now)
    }

    /// An advertisement of this virtual router from `source`, already checked
    /// (TTL, checksum, version, VRID). `max_advert_interval` is the packet's
    /// field, in centiseconds.
    pub(crate) fn on_advert(
        &mut self,
        now: Instant,
        source: IpAddr,
        priority: u8,
        max_advert_interval: u16,
    ) -> Vec<Action> {
        let interval = Duration::from_millis(u64::from(max_advert_interval) * 10);
        match self.state {
            VrrpState::Backup => {
                if priority == 0 {
                    // The master is leaving: take over after Skew_Time only.
                    self.timer = Timer::MasterDown(now + self.skew_time());
                } else if !self.config.preempt || priority >= self.config.priority {
                    self.learn(interval);
                    self.timer = Timer::MasterDown(now + self.master_down_interval());
                }
                // Else a lower-priority master that we will preempt when the
                // timer expires: ignore it.
                Vec::new()
            }
            VrrpState::Master => {
                if priority == 0 {
                    // A master leaving (or a stray one): assert ourselves at once.
                    self.timer = Timer::Adver(now + self.config.advert_interval);
                    vec![Action::SendAdvert { priority: self.config.priority }]
                } else if priority > self.config.priority
                    || (priority == self.config.priority && source > self.own_address)
                {
                    // Step down at once, silently (RFC 5798 6.4.3): the winner
                    // discards a loser's adverts anyway.
                    self.learn(interval);
                    self.become_backup(now)
                } else {
                    // A lower priority (or an equal one from a smaller address):
                    // discarded, as RFC 5798 6.4.3 says. Answering each one would
                    // let anyone on the link make us send and re-announce at their
                    // rate; a real master that loses steps down at our next
                    // advert, one interval later at most.
                    Vec::new()
                }
            }
            VrrpState::Initialize => Vec::new(),
        }
    }

    /// The timer event: call at or after [`Machine::next_deadline`]; earlier
    /// calls do nothing.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.timer {
            Timer::MasterDown(at) if now >= at => {
                self.state = VrrpState::Master;
                self.timer = Timer::Adver(now + self.config.advert_interval);
                vec![Action::SendAdvert { priority: self.config.priority }, Action::BecomeMaster]
            }
            Timer::Adver(at) if now >= at => {
                self.timer = Timer::Adver(now + self.config.advert_interval);
                vec![Action::SendAdvert { priority: self.config.priority }]
            }
            _ => Vec::new(),
        }
    }

    /// Shutdown event: a Master sends priority 0 so the backups take over
    /// after Skew_Time; any state ends in Initialize.
    pub(crate) fn shutdown(&mut self) -> Vec<Action> {
        let actions = match self.state {
            VrrpState::Master => vec![Action::SendAdvert { priority: 0 }],
            _ => Vec::new(),
        };
        self.state = VrrpState::Initialize;
        self.timer = Timer::None;
        actions
    }

    /// A new priority, interval or preemption mode for the running router,
    /// without a state change: a Master keeps its mastership and advertises the
    /// new values at once (a lower priority lets a preempting backup take
    /// over); a Backup applies them from the next advertisement or timeout.
    pub(crate) fn reconfigure(&mut self, now: Instant, config: Config) -> Vec<Action> {
        let changed = config != self.config;
        self.config = config;
        match self.state {
            VrrpState::Master if changed => {
                self.timer = Timer::Adver(now + config.advert_interval);
                vec![Action::SendAdvert { priority: config.priority }]
            }
            _ => Vec::new(),
        }
    }

    fn learn(&mut self, interval: Duration) {
        // A zero interval would make Master_Down_Interval zero: keep ours.
        if !interval.is_zero() {
            self.master_adver_interval = interval;
        }
    }

    fn become_backup(&mut self, now: Instant) -> Vec<Action> {
        self.state = VrrpState::Backup;
        self.timer = Timer::MasterDown(now + self.master_down_interval());
        vec![Action::BecomeBackup]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "192.168.16.11";
    const LOWER_PEER: &str = "192.168.16.5";
    const HIGHER_PEER: &str = "192.168.16.12";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn config(priority: u8, preempt: bool) -> Config {
        Config { virtual_router_id: 51, priority, advert_interval: Duration::from_secs(1), preempt }
    }

    fn started(priority: u8, preempt: bool) -> (Machine, Instant) {
        let now = Instant::now();
        let mut machine = Machine::new(config(priority, preempt), ip(OWN));
        assert_eq!(machine.startup(now), [Action::BecomeBackup]);
        (machine, now)
    }

    fn master(priority: u8, preempt: bool) -> (Machine, Instant) {
        let (mut machine, start) = started(priority, preempt);
        let at = machine.next_deadline().unwrap();
        machine.on_timer(at);
        assert_eq!(machine.state(), VrrpState::Master);
        (machine, start + (at - start))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_follow_the_rfc_formulas_exactly() {
        // Priority 100, 1 s: Skew = 156/256 s = 609.375 ms; down = 3.609375 s.
        let (machine, _) = started(100, true);
        assert_eq!(machine.skew_time(), Duration::from_micros(609_375));
        assert_eq!(machine.master_down_interval(), Duration::from_micros(3_609_375));
        // Priority 254, 200 ms: Skew = 2 * 200 / 256 ms = 1.5625 ms.
        let mut fast = Machine::new(Config { advert_interval: ms(200), ..config(254, true) }, ip(OWN));
        fast.startup(Instant::now());
        assert_eq!(fast.skew_time(), Duration::from_micros(1_562) + Duration::from_nanos(500));
        assert_eq!(fast.master_down_interval(), ms(600) + Duration::from_nanos(1_562_500));
        // Priority 1: Skew = 255/256 of the interval.
        let (low, _) = started(1, true);
        assert_eq!(low.skew_time(), Duration::from_nanos(996_093_750));
    }

    #[test]
    fn startup_is_backup_with_the_master_down_timer() {
        let (machine, now) = started(100, true);
        assert_eq!(machine.state(), VrrpState::Backup);
        assert_eq!(machine.next_deadline(), Some(now + Duration::from_micros(3_609_375)));
    }

    #[test]
    fn startup_twice_does_nothing() {
        let (mut machine, now) = started(100, true);
        assert_eq!(machine.startup(now + ms(5)), []);
        assert_eq!(machine.next_deadline(), Some(now + Duration::from_micros(3_609_375)));
    }

    #[test]
    fn timer_before_the_deadline_does_nothing() {
        let (mut machine, now) = started(100, true);
        assert_eq!(machine.on_timer(now + ms(3_609)), []);
        assert_eq!(machine.state(), VrrpState::Backup);
    }

    #[test]
    fn master_down_expiry_makes_master_advertise_at_once_and_every_interval() {
        let (mut machine, now) = started(100, true);
        let at = now + Duration::from_micros(3_609_375);
        assert_eq!(machine.on_timer(at), [Action::SendAdvert { priority: 100 }, Action::BecomeMaster]);
        assert_eq!(machine.state(), VrrpState::Master);
        assert_eq!(machine.next_deadline(), Some(at + ms(1000)));
        assert_eq!(machine.on_timer(at + ms(1000)), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(machine.next_deadline(), Some(at + ms(2000)));
    }

    #[test]
    fn backup_learns_the_master_interval_and_resets_its_timer() {
        let (mut machine, now) = started(100, true);
        let later = now + ms(500);
        assert_eq!(machine.on_advert(later, ip(HIGHER_PEER), 150, 20), []);
        assert_eq!(machine.master_adver_interval(), ms(200));
        // 3 * 200 ms + 156/256 * 200 ms = 600 + 121.875 ms.
        assert_eq!(machine.next_deadline(), Some(later + ms(721) + Duration::from_micros(875)));
        assert_eq!(machine.state(), VrrpState::Backup);
    }

    #[test]
    fn backup_accepts_an_equal_priority_master() {
        let (mut machine, now) = started(100, true);
        machine.on_advert(now + ms(100), ip(LOWER_PEER), 100, 100);
        assert_eq!(machine.next_deadline(), Some(now + ms(100) + Duration::from_micros(3_609_375)));
    }

    #[test]
    fn backup_with_preempt_ignores_a_lower_priority_master_and_takes_over() {
        let (mut machine, now) = started(200, true);
        let deadline = machine.next_deadline();
        assert_eq!(machine.on_advert(now + ms(500), ip(HIGHER_PEER), 100, 50), []);
        assert_eq!(machine.next_deadline(), deadline, "timer not reset");
        assert_eq!(machine.master_adver_interval(), ms(1000), "interval not learned");
        let actions = machine.on_timer(deadline.unwrap());
        assert_eq!(actions, [Action::SendAdvert { priority: 200 }, Action::BecomeMaster]);
    }

    #[test]
    fn backup_without_preempt_follows_a_lower_priority_master() {
        let (mut machine, now) = started(200, false);
        let later = now + ms(500);
        assert_eq!(machine.on_advert(later, ip(LOWER_PEER), 100, 50), []);
        assert_eq!(machine.master_adver_interval(), ms(500));
        // Skew with our own priority 200: 56/256 * 500 ms = 109.375 ms.
        assert_eq!(machine.next_deadline(), Some(later + ms(1609) + Duration::from_micros(375)));
        assert_eq!(machine.state(), VrrpState::Backup);
    }

    #[test]
    fn backup_receiving_priority_zero_takes_over_after_skew_time() {
        let (mut machine, now) = started(100, true);
        machine.on_advert(now, ip(HIGHER_PEER), 150, 100);
        let leaving = now + ms(300);
        assert_eq!(machine.on_advert(leaving, ip(HIGHER_PEER), 0, 100), []);
        assert_eq!(machine.next_deadline(), Some(leaving + Duration::from_micros(609_375)));
        assert_eq!(machine.master_adver_interval(), ms(1000));
        assert_eq!(
            machine.on_timer(leaving + Duration::from_micros(609_375)),
            [Action::SendAdvert { priority: 100 }, Action::BecomeMaster]
        );
    }

    #[test]
    fn master_yields_to_a_higher_priority() {
        let (mut machine, now) = master(100, true);
        let at = now + ms(10);
        assert_eq!(machine.on_advert(at, ip(LOWER_PEER), 101, 20), [Action::BecomeBackup]);
        assert_eq!(machine.state(), VrrpState::Backup);
        assert_eq!(machine.master_adver_interval(), ms(200));
        assert_eq!(machine.next_deadline(), Some(at + ms(721) + Duration::from_micros(875)));
    }

    #[test]
    fn master_discards_a_lower_priority_advert() {
        // RFC 5798 6.4.3: no answer, no timer change, no re-announcement.
        for preempt in [false, true] {
            let (mut machine, now) = master(100, preempt);
            let deadline = machine.next_deadline();
            assert_eq!(machine.on_advert(now + ms(10), ip(HIGHER_PEER), 99, 100), []);
            assert_eq!(machine.on_advert(now + ms(11), ip(HIGHER_PEER), 1, 1), []);
            assert_eq!((machine.state(), machine.next_deadline()), (VrrpState::Master, deadline));
            assert_eq!(machine.master_adver_interval(), ms(1000), "nothing learnt from a loser");
        }
    }

    #[test]
    fn a_flood_of_losing_adverts_costs_a_master_nothing() {
        let (mut machine, now) = master(100, true);
        let deadline = machine.next_deadline();
        for n in 0..10_000u32 {
            // Lower priorities from any address, and our own priority from
            // addresses below ours (192.168.16.11): all lose.
            let (priority, last_byte) =
                if n % 2 == 0 { ((n % 99) as u8 + 1, (n % 250) as u8 + 1) } else { (100, (n % 10) as u8) };
            let source = IpAddr::from([192, 168, 16, last_byte]);
            let at = now + Duration::from_micros(u64::from(n));
            let actions = machine.on_advert(at, source, priority, (n % 4096) as u16);
            assert_eq!(actions, [], "advert {n}: priority {priority} from {source}");
        }
        assert_eq!((machine.state(), machine.next_deadline()), (VrrpState::Master, deadline));
        assert_eq!(machine.master_adver_interval(), ms(1000));
    }

    #[test]
    fn equal_priority_tie_break_on_the_primary_address() {
        // A greater source address wins: we step down.
        let (mut machine, now) = master(100, true);
        assert_eq!(machine.on_advert(now, ip(HIGHER_PEER), 100, 100), [Action::BecomeBackup]);
        // A smaller one loses: we stay Master, and discard it.
        let (mut machine, now) = master(100, true);
        assert_eq!(machine.on_advert(now, ip(LOWER_PEER), 100, 100), []);
        assert_eq!(machine.state(), VrrpState::Master);
        // Addresses compare as unsigned numbers, not as text.
        let (mut machine, now) = master(100, true);
        assert_eq!(machine.on_advert(now, ip("192.168.16.9"), 100, 100), []);
        assert_eq!(machine.state(), VrrpState::Master);
        // IPv6 too.
        let mut v6 = Machine::new(config(100, true), ip("fe80::a"));
        let at = Instant::now();
        v6.startup(at);
        v6.on_timer(v6.next_deadline().unwrap());
        assert_eq!(v6.on_advert(at, ip("fe80::9"), 100, 100), []);
        assert_eq!(v6.state(), VrrpState::Master);
        assert_eq!(v6.on_advert(at, ip("fe80::b"), 100, 100), [Action::BecomeBackup]);
    }

    #[test]
    fn master_receiving_priority_zero_advertises_at_once() {
        let (mut machine, now) = master(100, true);
        let at = now + ms(300);
        assert_eq!(machine.on_advert(at, ip(HIGHER_PEER), 0, 100), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(machine.next_deadline(), Some(at + ms(1000)));
        assert_eq!(machine.state(), VrrpState::Master);
    }

    #[test]
    fn shutdown_of_a_master_sends_priority_zero() {
        let (mut machine, _) = master(100, true);
        assert_eq!(machine.shutdown(), [Action::SendAdvert { priority: 0 }]);
        assert_eq!((machine.state(), machine.next_deadline()), (VrrpState::Initialize, None));
    }

    #[test]
    fn shutdown_of_a_backup_sends_nothing() {
        let (mut machine, _) = started(100, true);
        assert_eq!(machine.shutdown(), []);
        assert_eq!((machine.state(), machine.next_deadline()), (VrrpState::Initialize, None));
    }

    #[test]
    fn initialize_ignores_adverts_and_timers() {
        let mut machine = Machine::new(config(100, true), ip(OWN));
        let now = Instant::now();
        assert_eq!(machine.on_advert(now, ip(HIGHER_PEER), 0, 100), []);
        assert_eq!(machine.on_timer(now + ms(100_000)), []);
        assert_eq!((machine.state(), machine.next_deadline()), (VrrpState::Initialize, None));
    }

    #[test]
    fn reconfiguring_a_master_keeps_it_master_and_advertises_the_new_values() {
        let (mut machine, now) = master(100, true);
        let new = Config { priority: 50, advert_interval: ms(200), ..config(100, true) };
        assert_eq!(machine.reconfigure(now, new), [Action::SendAdvert { priority: 50 }]);
        assert_eq!((machine.state(), machine.next_deadline()), (VrrpState::Master, Some(now + ms(200))));
        assert_eq!(machine.reconfigure(now, new), [], "no change, no advert");
    }

    #[test]
    fn reconfiguring_a_backup_applies_from_the_next_advert() {
        let (mut machine, now) = started(100, true);
        let deadline = machine.next_deadline();
        assert_eq!(machine.reconfigure(now, config(200, true)), []);
        assert_eq!(machine.next_deadline(), deadline);
        // Now priority 200 > the master's 150: with preempt, its adverts are ignored.
        machine.on_advert(now + ms(1), ip(HIGHER_PEER), 150, 100);
        assert_eq!(machine.next_deadline(), deadline);
    }

    #[test]
    fn a_zero_interval_in_an_advert_is_not_learned() {
        let (mut machine, now) = started(100, true);
        machine.on_advert(now, ip(HIGHER_PEER), 150, 0);
        assert_eq!(machine.master_adver_interval(), ms(1000));
    }

    #[test]
    fn config_validation_names_the_value() {
        assert_eq!(config(100, true).validate(), Ok(()));
        assert_eq!(
            config(255, true).validate().unwrap_err().to_string(),
            "VRRP priority 255 of virtual router 51: must be 1-254"
        );
        assert_eq!(config(0, true).validate(), Err(ConfigError::Priority { vrid: 51, priority: 0 }));
        let vrid0 = Config { virtual_router_id: 0, ..config(100, true) };
        assert_eq!(vrid0.validate(), Err(ConfigError::VirtualRouterId));
        for bad in [ms(0), ms(5), ms(15), ms(41_000)] {
            let c = Config { advert_interval: bad, ..config(100, true) };
            assert_eq!(c.validate(), Err(ConfigError::AdvertInterval { vrid: 51, interval: bad }));
        }
        let c = Config { advert_interval: ms(40_950), ..config(100, true) };
        assert_eq!((c.validate(), c.advert_interval_centiseconds()), (Ok(()), 4095));
    }
}
