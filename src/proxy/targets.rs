//! An upstream's targets: which one a request goes to (round robin or
//! fewest in flight), and passive health (a target that fails
//! `health.failures` exchanges in a row sits out for `health.eject`).
//! Shared by every worker; the pools themselves are per worker.

use crate::config::{Balance, Health, Upstream};
use crate::http1::Pool;
use crate::metrics::Metrics;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The targets of one upstream.
pub struct Group {
    targets: Vec<TargetState>,
    next: AtomicUsize,
    balance: Balance,
    health: Health,
    /// Time zero of the ejection clock.
    epoch: Instant,
}

struct TargetState {
    authority: String,
    failures: AtomicU32,
    /// Until when (ms after `epoch`) the target is out of rotation; 0 for never.
    ejected_until: AtomicU64,
    counts: Counts,
}

/// `keygate_upstream_requests_total` children of one target, by result.
struct Counts {
    ok: IntCounter,
    failed_status: IntCounter,
    connect_error: IntCounter,
    error: IntCounter,
    timeout: IntCounter,
    ejections: IntCounter,
}

/// How an exchange with a target went, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response came (any status but the ones below).
    Answered,
    /// 502, 503 or 504 from the target itself.
    FailedStatus,
    /// No connection (refused, unreachable, TLS handshake, connect timeout).
    ConnectError,
    /// The connection broke or the answer was malformed.
    Error,
    /// No response head before the upstream's timeout.
    Timeout,
}

/// The set of targets already tried for one request (at most 64 targets).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    pub fn add(&mut self, i: usize) {
        self.0 |= 1 << i;
    }
}

impl Group {
    /// The state of `upstream`'s targets, their metrics at zero.
    pub fn new(upstream: &Upstream, metrics: &Metrics) -> Group {
        let targets = upstream
            .targets
            .iter()
            .map(|t| {
                let labels = |result| metrics.upstream_requests.with_label_values(&[&upstream.name, t.as_str(), result]);
                TargetState {
                    authority: t.as_str().to_string(),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    counts: Counts {
                        ok: labels("ok"),
                        failed_status: labels("failed_status"),
                        connect_error: labels("connect_error"),
                        error: labels("error"),
                        timeout: labels("timeout"),
                        ejections: metrics.upstream_ejections.with_label_values(&[&upstream.name, t.as_str()]),
                    },
                }
            })
            .collect();
        Group { targets, next: AtomicUsize::new(0), balance: upstream.balance, health: upstream.health, epoch: Instant::now() }
    }

    fn clock(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// The target for the next attempt, or none when every one was tried.
    /// Targets in rotation come first; when none is left, an ejected one
    /// is still better than no answer.
    pub fn pick(&self, pools: &[Arc<Pool>], tried: Tried, now: Instant) -> Option<usize> {
        let n = self.targets.len();
        if n == 1 {
            return (!tried.has(0)).then_some(0);
        }
        let now = self.clock(now);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|k| (start + k) % n).filter(|&i| !tried.has(i));
        let in_rotation = |i: &usize| self.targets[*i].ejected_until.load(Ordering::Relaxed) <= now;
        let choose = |candidates: &mut dyn Iterator<Item = usize>| match self.balance {
            Balance::RoundRobin => candidates.next(),
            // Ties go to the round-robin order.
            Balance::LeastOutstanding => candidates.min_by_key(|&i| pools.get(i).map_or(0, |p| p.target().in_use())),
        };
        choose(&mut order.clone().filter(in_rotation)).or_else(|| choose(&mut order.clone()))
    }

    /// Counts an exchange with target `i`; ejects it after too many
    /// failures in a row (only where another target can take its place).
    pub fn record(&self, i: usize, outcome: Outcome, now: Instant) {
        let Some(t) = self.targets.get(i) else { return };
        let counter = match outcome {
            Outcome::Answered => &t.counts.ok,
            Outcome::FailedStatus => &t.counts.failed_status,
            Outcome::ConnectError => &t.counts.connect_error,
            Outcome::Error => &t.counts.error,
            Outcome::Timeout => &t.counts.timeout,
        };
        counter.inc();
        if outcome == Outcome::Answered {
            // Read first: a healthy target's line is never written to.
            if t.failures.load(Ordering::Relaxed) != 0 {
                t.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.health.failures && self.targets.len() > 1 {
            t.failures.store(0, Ordering::Relaxed);
            let until = self.clock(now) + self.health.eject.as_millis() as u64;
            t.ejected_until.store(until, Ordering::Relaxed);
            t.counts.ejections.inc();
            tracing::warn!(target_addr = %t.authority, failures, eject_for = ?self.health.eject, "upstream target ejected");
        }
    }
}

impl Group {
    /// How an answered status counts: as a failure only when
    /// `health.statuses` lists it.
    pub fn outcome_of(&self, status: http::StatusCode) -> Outcome {
        if self.health.statuses.contains(status.as_u16()) {
            Outcome::FailedStatus
        } else {
            Outcome::Answered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn group(targets: usize, failures: u32) -> Group {
        let authority = |i| format!("10.0.0.{i}:80").parse().unwrap();
        let upstream = Upstream {
            name: "backend".into(),
            origin: "backend.test".parse().unwrap(),
            scheme: http::uri::Scheme::HTTP,
            base_path: String::new(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            targets: (0..targets).map(authority).collect(),
            tls: None,
            balance: Balance::RoundRobin,
            health: Health { failures, eject: Duration::from_secs(10), statuses: crate::config::StatusSet::NONE },
        };
        Group::new(&upstream, &Metrics::new().unwrap())
    }

    fn picks(g: &Group, n: usize, now: Instant) -> Vec<usize> {
        (0..n).map(|_| g.pick(&[], Tried::default(), now).unwrap()).collect()
    }

    #[test]
    fn round_robin_takes_each_target_in_turn() {
        let g = group(3, 2);
        assert_eq!(picks(&g, 6, Instant::now()), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_retry_never_goes_back_to_a_tried_target() {
        let g = group(3, 2);
        let mut tried = Tried::default();
        let mut seen = Vec::new();
        while let Some(i) = g.pick(&[], tried, Instant::now()) {
            tried.add(i);
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2], "each once, then none");
    }

    #[test]
    fn failures_in_a_row_eject_a_target_until_its_time_is_up() {
        let g = group(3, 2);
        let now = Instant::now();
        g.record(1, Outcome::ConnectError, now);
        assert!(picks(&g, 3, now).contains(&1), "one failure is not enough");
        g.record(1, Outcome::Timeout, now);
        assert!(!picks(&g, 6, now).contains(&1), "two in a row eject it");
        assert_eq!(g.targets[1].counts.ejections.get(), 1);
        assert!(picks(&g, 3, now + Duration::from_secs(11)).contains(&1), "back after `eject`");
    }

    #[test]
    fn an_answer_between_failures_resets_the_count() {
        let g = group(2, 2);
        let now = Instant::now();
        for outcome in [Outcome::Error, Outcome::Answered, Outcome::FailedStatus, Outcome::Answered] {
            g.record(0, outcome, now);
        }
        assert!(picks(&g, 2, now).contains(&0));
        assert_eq!(g.targets[0].counts.ejections.get(), 0);
    }

    #[test]
    fn with_every_target_ejected_one_is_still_tried() {
        let g = group(2, 1);
        let now = Instant::now();
        g.record(0, Outcome::ConnectError, now);
        g.record(1, Outcome::ConnectError, now);
        let first = g.pick(&[], Tried::default(), now).expect("better than no answer");
        let mut tried = Tried::default();
        tried.add(first);
        assert!(g.pick(&[], tried, now).is_some(), "and the other after it");
    }

    #[test]
    fn a_lone_target_is_never_ejected() {
        let g = group(1, 1);
        let now = Instant::now();
        for _ in 0..5 {
            g.record(0, Outcome::ConnectError, now);
        }
        assert_eq!(g.targets[0].counts.ejections.get(), 0);
        assert_eq!(g.pick(&[], Tried::default(), now), Some(0));
    }

    #[test]
    fn an_answer_counts_as_a_failure_only_when_its_status_is_listed() {
        let mut g = group(2, 1);
        for status in [http::StatusCode::SERVICE_UNAVAILABLE, http::StatusCode::BAD_GATEWAY, http::StatusCode::NOT_FOUND] {
            assert_eq!(g.outcome_of(status), Outcome::Answered, "{status}: a client may ask for any page");
        }
        g.health.statuses.insert(503);
        assert_eq!(g.outcome_of(http::StatusCode::SERVICE_UNAVAILABLE), Outcome::FailedStatus);
        assert_eq!(g.outcome_of(http::StatusCode::BAD_GATEWAY), Outcome::Answered);
        let mut set = crate::config::StatusSet::NONE;
        for s in [100, 599, 503] {
            set.insert(s);
        }
        assert!(set.contains(100) && set.contains(599) && set.contains(503) && !set.contains(504) && !set.contains(99));
    }
}
