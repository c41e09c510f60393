//! The rise/fall state of one health-check target, without IO.

/// Whether a target counts as healthy, with the run of results that will
/// change that: `fall` consecutive failures make a healthy target unhealthy,
/// `rise` consecutive successes make an unhealthy one healthy again; a result
/// of the other kind starts the run over.
///
/// A new target starts healthy. The agent learns its targets from the desired
/// state, and after a restart of the agent that state still names servers the
/// kernel is already sending traffic to: starting them unhealthy would take
/// every server out (or set its weight to 0) for `rise` intervals, moving
/// clients to the sorry server and, with `onFailure: Remove`, breaking their
/// established connections. Starting healthy changes nothing in the kernel
/// until a server has actually failed `fall` checks in a row, which is also
/// keepalived's default. The price: a new server that is down gets traffic
/// for its first `fall` intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RiseFall {
    healthy: bool,
    /// Consecutive results against the current state (failures while
    /// healthy, successes while unhealthy).
    run: u32,
    rise: u32,
    fall: u32,
}

impl RiseFall {
    /// A new target: healthy (see the type's doc). `rise` and `fall` below 1
    /// count as 1.
    #[cfg(test)]
    pub(crate) fn new(rise: u32, fall: u32) -> Self {
        Self::starting(true, rise, fall)
    }

    /// A target whose state is already known, e.g. one whose check changed:
    /// it keeps `healthy` and starts a new run.
    pub(crate) fn starting(healthy: bool, rise: u32, fall: u32) -> Self {
        Self { healthy, run: 0, rise: rise.max(1), fall: fall.max(1) }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Consecutive results so far against the current state.
    #[cfg(test)]
    pub(crate) fn run(&self) -> u32 {
        self.run
    }

    /// Records one check's result; returns whether the state changed.
    pub(crate) fn record(&mut self, success: bool) -> bool {
        if success == self.healthy {
            self.run = 0;
            return false;
        }
        self.run += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.run < needed {
            return false;
        }
        self.healthy = success;
        self.run = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(state: &mut RiseFall, results: &str) -> String {
        results
            .chars()
            .map(|c| {
                let changed = state.record(c == '+');
                match (changed, state.is_healthy()) {
                    (false, _) => '.',
                    (true, true) => 'U',
                    (true, false) => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn starts_healthy() {
        assert!(RiseFall::new(2, 3).is_healthy());
        assert!(!RiseFall::starting(false, 2, 3).is_healthy());
    }

    #[test]
    fn fall_consecutive_failures_make_it_unhealthy() {
        let mut state = RiseFall::new(2, 3);
        assert_eq!(feed(&mut state, "--"), "..");
        assert!(state.is_healthy());
        assert_eq!(feed(&mut state, "-"), "D");
        assert!(!state.is_healthy());
        // Further failures change nothing.
        assert_eq!(feed(&mut state, "---"), "...");
    }

    #[test]
    fn a_success_restarts_the_failure_run() {
        let mut state = RiseFall::new(2, 3);
        assert_eq!(feed(&mut state, "--+--+--+"), ".........");
        assert!(state.is_healthy());
        assert_eq!(feed(&mut state, "---"), "..D");
    }

    #[test]
    fn rise_consecutive_successes_make_it_healthy() {
        let mut state = RiseFall::starting(false, 2, 3);
        assert_eq!(feed(&mut state, "+-+-+"), ".....");
        assert!(!state.is_healthy());
        assert_eq!(feed(&mut state, "+"), "U");
        assert!(state.is_healthy());
        assert_eq!(state.run(), 0);
    }

    #[test]
    fn rise_and_fall_of_one() {
        let mut state = RiseFall::new(1, 1);
        assert_eq!(feed(&mut state, "+-+--++"), ".DUD.U.");
    }

    #[test]
    fn zero_counts_as_one() {
        let mut state = RiseFall::new(0, 0);
        assert_eq!(feed(&mut state, "-+"), "DU");
    }

    #[test]
    fn full_cycle() {
        let mut state = RiseFall::new(3, 2);
        assert_eq!(feed(&mut state, "+-+--++-+++-"), "....D.....U.");
    }
}
