//! The retry budget per destination cluster: a sliding window of per-second buckets (requests,
//! retries) kept in one proxy-wasm shared-data key per cluster, so every Envoy worker counts
//! against the same budget, updated with compare-and-swap.
//!
//! Allowed retries in the window = `ratio * requests_in_window + min_retries_per_second *
//! window_seconds`. A request reserves its retries up front (the filter cannot know how many
//! Envoy will perform), and the reservation is settled when the response reports the real
//! attempt count. A refund of unused reservations is not written on its own: it is held by the
//! worker ([`Refunds`]) and rides on that worker's next write for the cluster (the next
//! admission) or on the root's tick, whichever comes first, so a request costs one
//! read-modify-write instead of two; in between the budget only errs on the safe side. A CAS
//! that keeps failing is retried [`MAX_CAS_TRIES`] times, then the request
//! is denied its retries (fail closed: under that much contention retrying is the wrong bet).
//! A read that fails counts the same way: nothing is written, since a write without the CAS
//! token of a successful read would replace the window.
//! The very first write of a cluster's key has no CAS token to compare (the key does not exist
//! yet), so two workers racing on it can lose one request's counts once; every later write is
//! compare-and-swap.
//!
//! Several configurations may share a cluster's key (two listeners, or the old and the new
//! configuration during an update), also with different windows: the stored window is as long
//! as the longest of them (a shorter one is lengthened in place, never started over), and each
//! configuration counts the last `window_seconds` of it against its own ratio and floor. So
//! they share one budget, and none resets another's counts.
//!
//! Time is the host's wall clock, shared by all workers. A reading up to
//! [`MAX_CLOCK_LAG_SECONDS`] behind the window's newest second is a race between workers and
//! counts in the newest second; a reading further behind is a clock stepped back: the window is
//! moved back to it with its counts (neither frozen until the clock catches up, nor emptied).

use std::time::UNIX_EPOCH;

use meshwasm::host::{Host, HostError};

/// How many read-modify-write rounds a budget update may take before giving up.
pub const MAX_CAS_TRIES: u32 = 8;

/// Largest window accepted by configuration (it bounds the shared-data value size).
pub const MAX_WINDOW_SECONDS: u32 = 60;

/// Largest `ratio`: retries may at most double a cluster's load. A ratio is a fraction (20
/// would be 2000%), and since a request makes at most 10 retries, any ratio from 10 up would
/// never limit anything: the budget would be off.
pub const MAX_RATIO: f64 = 1.0;

/// Largest `min_retries_per_second`. The floor is for quiet clusters; a floor above a
/// cluster's request rate times its retries per request switches the budget off for it, so it
/// stays small (Linkerd's default is 10).
pub const MAX_MIN_RETRIES_PER_SECOND: u32 = 100;

/// How far (seconds) a clock reading may be behind the window's newest second and still be a
/// race between workers rather than a clock stepped back.
pub const MAX_CLOCK_LAG_SECONDS: u64 = 1;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 1 + 8;

/// The budget's parameters (validated by the configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetParams {
    /// Retries may add this fraction of the requests in the window.
    pub ratio: f64,
    /// Plus this many retries per second of window, always.
    pub min_retries_per_second: u32,
    /// Window length in seconds (1..=[`MAX_WINDOW_SECONDS`]).
    pub window_seconds: u32,
}

impl BudgetParams {
    /// Retries allowed in a window holding `requests` requests.
    pub fn allowed(&self, requests: u64) -> u64 {
        let floor = u64::from(self.min_retries_per_second) * u64::from(self.window_seconds);
        // Float to int saturates and maps NaN to 0; `ratio` is finite and non-negative anyway.
        let share = (self.ratio * requests as f64).floor() as u64;
        floor.saturating_add(share)
    }
}

/// Per-second counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Requests that started in this second.
    pub requests: u32,
    /// Retries reserved (and, after settling, performed) by those requests.
    pub retries: u32,
}

/// The sliding window as stored in shared data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The Unix second of the newest bucket.
    pub newest: u64,
    /// One bucket per second, indexed by `second % len`.
    pub buckets: Vec<Bucket>,
}

impl Window {
    /// An empty window of `seconds` buckets ending at `now`.
    pub fn new(seconds: u32, now: u64) -> Window {
        Window {
            newest: now,
            buckets: vec![Bucket::default(); seconds.max(1) as usize],
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn slot(&self, second: u64) -> usize {
        (second % self.len().max(1)) as usize
    }

    /// Moves the window forward to `now`, clearing the buckets of the seconds that left it.
    /// A `now` at most [`MAX_CLOCK_LAG_SECONDS`] behind the newest second (a worker that read
    /// the clock just before another wrote) changes nothing; further behind, the clock was
    /// stepped back, and the window moves back to `now` keeping its counts ([`Window::rebase`]).
    pub fn roll(&mut self, now: u64) {
        if now < self.newest && self.newest - now > MAX_CLOCK_LAG_SECONDS {
            self.rebase(now);
            return;
        }
        if now <= self.newest {
            return;
        }
        let gap = now - self.newest;
        if gap >= self.len() {
            self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
        } else {
            for s in self.newest + 1..=now {
                let i = self.slot(s);
                if let Some(b) = self.buckets.get_mut(i) {
                    *b = Bucket::default();
                }
            }
        }
        self.newest = now;
    }

    /// The same counts, second for second, in a window whose newest second is `now`: what a
    /// clock stepped back sees (the counts are as recent as they were; only their labels move).
    pub fn rebase(&mut self, now: u64) {
        let len = self.len();
        let mut moved = vec![Bucket::default(); self.buckets.len()];
        for age in 0..len {
            let (Some(from), Some(to)) = (self.newest.checked_sub(age), now.checked_sub(age))
            else {
                break;
            };
            let bucket = self.buckets.get(self.slot(from)).copied();
            if let (Some(b), Some(slot)) = (bucket, moved.get_mut(self.slot(to))) {
                *slot = b;
            }
        }
        self.buckets = moved;
        self.newest = now;
    }

    /// The same window with at least `seconds` buckets: a shorter one (written by a
    /// configuration with a shorter window) is lengthened, its seconds kept; a longer one is
    /// kept as it is ([`Window::totals_within`] reads the part a configuration counts).
    pub fn at_least(self, seconds: u32) -> Window {
        let want = seconds.max(1) as usize;
        if self.buckets.len() >= want {
            return self;
        }
        let mut longer = Window::new(seconds, self.newest);
        for age in 0..self.len() {
            let Some(second) = self.newest.checked_sub(age) else {
                break;
            };
            let bucket = self.buckets.get(self.slot(second)).copied();
            let slot = longer.slot(second);
            if let (Some(b), Some(to)) = (bucket, longer.buckets.get_mut(slot)) {
                *to = b;
            }
        }
        longer
    }

    /// Requests and retries in the window.
    pub fn totals(&self) -> (u64, u64) {
        self.totals_within(u32::MAX)
    }

    /// Requests and retries in the newest `seconds` seconds of the window.
    pub fn totals_within(&self, seconds: u32) -> (u64, u64) {
        let ages = self.len().min(u64::from(seconds));
        (0..ages)
            .filter_map(|age| self.newest.checked_sub(age))
            .filter_map(|second| self.buckets.get(self.slot(second)))
            .fold((0, 0), |(q, r), b| {
                (q + u64::from(b.requests), r + u64::from(b.retries))
            })
    }

    /// The bucket of `second` if it is still inside the window.
    pub fn bucket_mut(&mut self, second: u64) -> Option<&mut Bucket> {
        if second > self.newest || self.newest - second >= self.len() {
            return None;
        }
        let i = self.slot(second);
        self.buckets.get_mut(i)
    }

    /// The compact wire form: version, bucket count, newest second, then (requests, retries)
    /// per bucket, little endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 8 * self.buckets.len());
        out.push(VERSION);
        out.push(u8::try_from(self.buckets.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.newest.to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&b.requests.to_le_bytes());
            out.extend_from_slice(&b.retries.to_le_bytes());
        }
        out
    }

    /// Decodes [`Window::encode`]'s form; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Window> {
        let (&version, rest) = bytes.split_first()?;
        let (&count, rest) = rest.split_first()?;
        if version != VERSION || count == 0 {
            return None;
        }
        let newest = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let body = rest.get(8..)?;
        if body.len() != 8 * usize::from(count) {
            return None;
        }
        let u32_at = |c: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(c.get(at..at + 4)?.try_into().ok()?))
        };
        let buckets = body
            .chunks_exact(8)
            .map(|c| {
                Some(Bucket {
                    requests: u32_at(c, 0)?,
                    retries: u32_at(c, 4)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Window { newest, buckets })
    }

    /// Records one request wanting `wanted` retries at `now` and returns how many it may make
    /// (counting the last `params.window_seconds` seconds).
    pub fn admit(&mut self, params: &BudgetParams, now: u64, wanted: u32) -> u32 {
        self.roll(now);
        let (requests, retries) = self.totals_within(params.window_seconds);
        let allowed = params.allowed(requests + 1);
        let remaining = allowed.saturating_sub(retries);
        let granted = u32::try_from(remaining.min(u64::from(wanted))).unwrap_or(wanted);
        let at = self.newest;
        if let Some(b) = self.bucket_mut(at) {
            b.requests = b.requests.saturating_add(1);
            b.retries = b.retries.saturating_add(granted);
        }
        granted
    }

    /// Moves the window to `now`, then corrects the retries recorded at `second` by `delta`
    /// ([`Window::correct`]).
    pub fn settle(&mut self, now: u64, second: u64, delta: i64) {
        self.roll(now);
        self.correct(second, delta);
    }

    /// Corrects the retries recorded at `second` by `delta` (negative: a refund of unused
    /// reservations), without moving the window. Nothing happens once that second has left it.
    pub fn correct(&mut self, second: u64, delta: i64) {
        if let Some(b) = self.bucket_mut(second) {
            let magnitude = u32::try_from(delta.unsigned_abs()).unwrap_or(u32::MAX);
            b.retries = if delta < 0 {
                b.retries.saturating_sub(magnitude)
            } else {
                b.retries.saturating_add(magnitude)
            };
        }
    }
}

/// The result of asking the budget for retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Retries the request may make (at most what it wanted).
    pub granted: u32,
    /// The Unix second the request was recorded in (for settling).
    pub second: u64,
    /// The shared-data update did not go through within [`MAX_CAS_TRIES`]: nothing was
    /// recorded and nothing granted.
    pub contended: bool,
}

/// The shared-data key of `cluster`'s budget.
pub fn key(cluster: &str) -> String {
    format!("meshwasm.route_retries.budget.{cluster}")
}

/// The host's clock in Unix seconds.
pub fn now_seconds(host: &dyn Host) -> u64 {
    host.now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Read-modify-write of one cluster's window with compare-and-swap, at most
/// [`MAX_CAS_TRIES`] rounds. `update` may run several times; it must only depend on the window.
/// Returns the value of the round that was written, or `None` when every round lost the race
/// (or the host refused the write).
fn update<T>(
    host: &dyn Host,
    params: &BudgetParams,
    cluster: &str,
    now: u64,
    mut change: impl FnMut(&mut Window) -> T,
) -> Option<T> {
    let key = key(cluster);
    for _ in 0..MAX_CAS_TRIES {
        let (bytes, cas) = match host.shared_data(&key) {
            Ok(read) => read,
            Err(e) => {
                // Not an absent key: writing now would replace the window. Fail closed.
                log::warn!("route_retries: budget for {cluster} not read: {e}");
                return None;
            }
        };
        // A value that is not a window (corrupted) is replaced; a window of another length
        // (another configuration's) is shared ([`Window::at_least`]).
        let mut window = bytes
            .as_deref()
            .and_then(Window::decode)
            .map(|w| w.at_least(params.window_seconds))
            .unwrap_or_else(|| Window::new(params.window_seconds, now));
        let out = change(&mut window);
        match host.set_shared_data(&key, &window.encode(), cas) {
            Ok(()) => return Some(out),
            Err(HostError::CasMismatch) => continue,
            Err(e) => {
                log::warn!("route_retries: budget for {cluster} not updated: {e}");
                return None;
            }
        }
    }
    None
}

/// Clusters a worker holds refunds for; past it a refund is written at once.
pub const MAX_REFUND_CLUSTERS: usize = 256;

/// Unused reservations a worker owes back, per cluster: (second recorded, retries to return).
/// A worker talks to a handful of clusters, so a list searched in place is enough.
#[derive(Debug)]
pub struct Refunds {
    by_cluster: Vec<(String, Vec<(u64, u32)>)>,
    /// The budget's window: at most this many seconds are held per cluster.
    window_seconds: u32,
}

impl Refunds {
    /// No refunds, for a budget of `window_seconds`.
    pub fn new(window_seconds: u32) -> Refunds {
        Refunds {
            by_cluster: Vec::new(),
            window_seconds,
        }
    }

    /// Holds `amount` retries to return to `cluster`'s bucket of `second`. False when this
    /// worker already holds refunds for [`MAX_REFUND_CLUSTERS`] other clusters: write it now.
    pub fn hold(&mut self, cluster: &str, second: u64, amount: u32) -> bool {
        if amount == 0 {
            return true;
        }
        let i = match self.by_cluster.iter().position(|(c, _)| c == cluster) {
            Some(i) => i,
            None if self.by_cluster.len() >= MAX_REFUND_CLUSTERS => return false,
            None => {
                self.by_cluster.push((cluster.to_string(), Vec::new()));
                self.by_cluster.len() - 1
            }
        };
        let held = &mut self.by_cluster[i].1;
        match held.iter_mut().find(|(s, _)| *s == second) {
            Some((_, n)) => *n = n.saturating_add(amount),
            None => held.push((second, amount)),
        }
        // More seconds than the window has: the oldest can only be dropped by it anyway.
        while held.len() > self.window_seconds.max(1) as usize {
            let oldest = (0..held.len()).min_by_key(|&j| held[j].0).unwrap_or(0);
            held.swap_remove(oldest);
        }
        true
    }

    /// Takes what is held for `cluster` (to write it; [`Refunds::restore`] if that fails).
    pub fn take(&mut self, cluster: &str) -> Vec<(u64, u32)> {
        match self.by_cluster.iter().position(|(c, _)| c == cluster) {
            Some(i) => self.by_cluster.swap_remove(i).1,
            None => Vec::new(),
        }
    }

    /// Puts back refunds whose write did not go through.
    pub fn restore(&mut self, cluster: &str, held: Vec<(u64, u32)>) {
        for (second, amount) in held {
            // A full list drops the refund: the budget errs on the safe side.
            let _ = self.hold(cluster, second, amount);
        }
    }

    /// The clusters with refunds held.
    pub fn clusters(&self) -> Vec<String> {
        self.by_cluster.iter().map(|(c, _)| c.clone()).collect()
    }

    /// Retries held for `cluster`, summed (for tests and logs).
    pub fn held(&self, cluster: &str) -> u64 {
        self.by_cluster
            .iter()
            .filter(|(c, _)| c == cluster)
            .flat_map(|(_, h)| h.iter())
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

fn give_back(window: &mut Window, held: &[(u64, u32)]) {
    for (second, amount) in held {
        window.correct(*second, -i64::from(*amount));
    }
}

/// Records a request to `cluster` wanting `wanted` retries and reserves what the budget allows,
/// returning the `held` refunds in the same write.
pub fn admit(
    host: &dyn Host,
    params: &BudgetParams,
    cluster: &str,
    wanted: u32,
    held: &[(u64, u32)],
) -> Admission {
    let now = now_seconds(host);
    match update(host, params, cluster, now, |w| {
        w.roll(now);
        give_back(w, held);
        (w.admit(params, now, wanted), w.newest)
    }) {
        Some((granted, second)) => Admission {
            granted,
            second,
            contended: false,
        },
        None => Admission {
            granted: 0,
            second: now,
            contended: true,
        },
    }
}

/// Replaces a reservation of `reserved` retries made at `second` by the `actual` count.
/// Returns false when the update did not go through.
///
/// The clock is not read again (one hostcall less per response): the window is corrected as of
/// `second`, without rolling it forward to the present. That decides nothing differently: the
/// bucket of `second` is corrected if it is still in the stored window, and if the present has
/// already moved it out, the next request (of any worker; they share the clock) rolls the
/// window to its own clock, clearing that bucket before counting, so the correction is dropped
/// exactly as a settle at the present would have dropped it.
pub fn settle(
    host: &dyn Host,
    params: &BudgetParams,
    cluster: &str,
    second: u64,
    reserved: u32,
    actual: u32,
) -> bool {
    let delta = i64::from(actual) - i64::from(reserved);
    if delta == 0 {
        return true;
    }
    update(host, params, cluster, second, |w| w.correct(second, delta)).is_some()
}

/// Writes the refunds held for every cluster (the root's tick). Returns how many clusters'
/// writes did not go through; their refunds stay held for the next try.
pub fn flush(host: &dyn Host, params: &BudgetParams, refunds: &mut Refunds) -> u32 {
    if refunds.by_cluster.is_empty() {
        return 0; // the usual tick: not even the clock is read
    }
    let now = now_seconds(host);
    let mut failed = 0;
    for cluster in refunds.clusters() {
        let held = refunds.take(&cluster);
        if update(host, params, &cluster, now, |w| give_back(w, &held)).is_none() {
            failed += 1;
            refunds.restore(&cluster, held);
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshwasm::testing::TestHost;
    use std::time::Duration;

    const P: BudgetParams = BudgetParams {
        ratio: 0.2,
        min_retries_per_second: 1,
        window_seconds: 10,
    };

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut w = Window::new(3, 100);
        w.admit(&P, 100, 2);
        let enc = w.encode();
        assert_eq!(enc.len(), 10 + 3 * 8);
        assert_eq!(Window::decode(&enc), Some(w));
        for cut in 0..enc.len() {
            assert_eq!(Window::decode(&enc[..cut]), None);
        }
        assert_eq!(
            Window::decode(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        assert_eq!(Window::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn floor_then_ratio() {
        // Floor: 1/s * 10 s = 10 retries with no traffic; each request adds 0.2.
        let mut w = Window::new(10, 0);
        assert_eq!(w.admit(&P, 0, 3), 3);
        assert_eq!(w.admit(&P, 0, 3), 3);
        assert_eq!(w.admit(&P, 0, 3), 3);
        // 3 requests + this one: floor(0.8) + 10 = 10 allowed, 9 used.
        assert_eq!(w.admit(&P, 0, 3), 1);
        // 5 requests: floor(1.0) + 10 = 11.
        assert_eq!(w.admit(&P, 0, 3), 1);
        assert_eq!(w.admit(&P, 0, 3), 0);
        assert_eq!(w.totals(), (6, 11));
        // Requests that want no retries still earn budget: 11 requests make 12.
        for _ in 0..4 {
            assert_eq!(w.admit(&P, 0, 0), 0);
        }
        assert_eq!(w.admit(&P, 0, 5), 1);
    }

    #[test]
    fn window_slides_and_forgets() {
        let mut w = Window::new(10, 0);
        assert_eq!(w.admit(&P, 0, 10), 10);
        assert_eq!(w.admit(&P, 5, 10), 0);
        // At second 10, second 0 has left the window.
        assert_eq!(w.admit(&P, 10, 10), 10);
        assert_eq!(w.totals(), (2, 10));
        // A long silence clears everything.
        w.roll(1_000);
        assert_eq!(w.totals(), (0, 0));
        // A clock a second behind the newest bucket (a race) counts in the newest second.
        assert_eq!(w.admit(&P, 999, 1), 1);
        assert_eq!((w.newest, w.totals()), (1_000, (1, 1)));
    }

    #[test]
    fn a_clock_stepped_back_moves_the_window_with_its_counts() {
        let mut w = Window::new(10, 100);
        w.admit(&P, 95, 2);
        w.admit(&P, 100, 3);
        // Back 50 s: the same counts, second for second, now ending at 50.
        w.roll(50);
        assert_eq!((w.newest, w.totals()), (50, (2, 5)));
        assert_eq!(
            w.bucket_mut(50).map(|b| *b),
            Some(Bucket {
                requests: 1,
                retries: 3
            })
        );
        assert_eq!(
            w.bucket_mut(45).map(|b| *b),
            Some(Bucket {
                requests: 1,
                retries: 2
            })
        );
        // And it slides on from there.
        w.roll(55);
        assert_eq!(w.totals(), (1, 3));
        w.roll(60);
        assert_eq!(w.totals(), (0, 0));
        // Near the epoch nothing underflows.
        let mut w = Window::new(10, 5);
        w.admit(&P, 5, 1);
        w.roll(0);
        assert_eq!((w.newest, w.totals()), (0, (1, 1)));
    }

    #[test]
    fn windows_of_other_lengths_are_shared_not_reset() {
        // A 3-second window written by one configuration, read by one with a 5-second window:
        // lengthened, its seconds kept.
        let mut short = Window::new(3, 10);
        short.admit(&P, 8, 1);
        short.admit(&P, 10, 2);
        let long = short.clone().at_least(5);
        assert_eq!(long.buckets.len(), 5);
        assert_eq!((long.newest, long.totals()), (10, (2, 3)));
        // A longer window is kept; the shorter configuration counts its own last seconds.
        assert_eq!(long.clone().at_least(3), long);
        assert_eq!(long.totals_within(1), (1, 2));
        assert_eq!(long.totals_within(3), (2, 3));
        let mut long = long;
        long.roll(13);
        assert_eq!(long.totals_within(3), (0, 0));
        assert_eq!(long.totals_within(5), (1, 2));
    }

    #[test]
    fn settle_refunds_and_charges_within_the_window_only() {
        let mut w = Window::new(10, 0);
        w.admit(&P, 0, 3);
        w.settle(0, 0, -2);
        assert_eq!(w.totals(), (1, 1));
        w.settle(3, 0, 4);
        assert_eq!(w.totals(), (1, 5));
        w.settle(3, 0, -100);
        assert_eq!(w.totals(), (1, 0));
        w.settle(10, 0, 5);
        assert_eq!(w.totals(), (0, 0), "second 0 left the window");
    }

    #[test]
    fn workers_share_one_budget() {
        let w1 = TestHost::new();
        let w2 = w1.new_worker();
        let w3 = w1.new_worker();
        let workers = [&w1, &w2, &w3];
        let mut granted = 0;
        for i in 0..300 {
            let a = admit(workers[i % 3], &P, "orders", 2, &[]);
            assert!(!a.contended);
            granted += a.granted;
        }
        // 10 floor + floor(0.2 * 300) = 70, whichever worker asked.
        assert_eq!(granted, 70);
        // Another cluster has its own budget.
        assert_eq!(admit(&w2, &P, "users", 2, &[]).granted, 2);
        // Refunds free budget for everyone.
        assert!(settle(&w1, &P, "orders", now_seconds(&w1), 2, 0));
        assert_eq!(admit(&w3, &P, "orders", 5, &[]).granted, 2);
        // Ten seconds later the window is fresh.
        w1.advance(Duration::from_secs(10));
        assert_eq!(admit(&w2, &P, "orders", 5, &[]).granted, 5);
    }

    /// A host whose shared-data writes keep losing the race for the first `losses` rounds.
    struct Racing {
        inner: TestHost,
        losses: std::cell::Cell<u32>,
    }

    impl Racing {
        fn lose(&self) -> bool {
            let l = self.losses.get();
            if l > 0 {
                self.losses.set(l - 1);
                // Another worker writes in between, bumping the CAS.
                let v = self.inner.shared(&key("c"));
                self.inner.poke_shared(&key("c"), &v.unwrap_or_default());
                return true;
            }
            false
        }
    }

    macro_rules! delegate {
        ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
            $(fn $name(&self, $($arg: $ty),*) -> $ret { self.inner.$name($($arg),*) })*
        };
    }

    impl Host for Racing {
        delegate! {
            header(map: meshwasm::host::MapKind, name: &str) -> Option<Vec<u8>>;
            headers(map: meshwasm::host::MapKind) -> Vec<(String, Vec<u8>)>;
            set_header(map: meshwasm::host::MapKind, name: &str, value: Option<&[u8]>) -> ();
            add_header(map: meshwasm::host::MapKind, name: &str, value: &[u8]) -> ();
            buffer(kind: meshwasm::host::BufferKind, start: usize, max: usize) -> Option<Vec<u8>>;
            set_buffer(kind: meshwasm::host::BufferKind, start: usize, size: usize, value: &[u8]) -> Result<(), HostError>;
            property(path: &[&str]) -> Option<Vec<u8>>;
            set_property(path: &[&str], value: Option<&[u8]>) -> Result<(), HostError>;
            now() -> std::time::SystemTime;
            set_tick_period(period: Duration) -> Result<(), HostError>;
            define_metric(kind: meshwasm::host::MetricKind, name: &str) -> Result<u32, HostError>;
            increment_metric(id: u32, offset: i64) -> Result<(), HostError>;
            record_metric(id: u32, value: u64) -> Result<(), HostError>;
            metric(id: u32) -> Result<u64, HostError>;
            shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
            http_call(cluster: &str, headers: &[(&str, &str)], body: Option<&[u8]>, timeout: Duration) -> Result<u32, HostError>;
            send_response(status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<(), HostError>;
            resume_request() -> Result<(), HostError>;
            resume_response() -> Result<(), HostError>;
        }
        fn set_shared_data(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), HostError> {
            // After a poke the CAS is stale, so the test host refuses this write.
            self.lose();
            self.inner.set_shared_data(key, value, cas)
        }
    }

    #[test]
    fn cas_conflicts_are_retried_then_fail_closed() {
        let host = Racing {
            inner: TestHost::new(),
            losses: std::cell::Cell::new(0),
        };
        // Create the key so that later writes carry a CAS.
        assert_eq!(admit(&host, &P, "c", 1, &[]).granted, 1);
        host.losses.set(MAX_CAS_TRIES - 1);
        let a = admit(&host, &P, "c", 1, &[]);
        assert_eq!((a.granted, a.contended), (1, false));
        assert_eq!(host.inner.cas_conflicts(), MAX_CAS_TRIES - 1);
        host.losses.set(MAX_CAS_TRIES);
        let a = admit(&host, &P, "c", 1, &[]);
        assert_eq!((a.granted, a.contended), (0, true));
        let w = Window::decode(&host.inner.shared(&key("c")).unwrap()).unwrap();
        assert_eq!(w.totals(), (2, 2), "the contended request recorded nothing");
    }

    #[test]
    fn refunds_merge_by_second_stay_bounded_and_survive_failed_writes() {
        let mut r = Refunds::new(3);
        assert!(r.hold("c", 100, 2));
        assert!(r.hold("c", 100, 1));
        assert!(r.hold("c", 100, 0));
        assert_eq!(r.held("c"), 3);
        // More seconds than the window holds: the oldest go (the window would drop them).
        for second in 101..=105 {
            assert!(r.hold("c", second, 1));
        }
        let mut kept = r.take("c");
        kept.sort_unstable();
        assert_eq!(kept, vec![(103, 1), (104, 1), (105, 1)]);
        // A full map refuses new clusters (the caller writes at once) but not known ones.
        for i in 0..MAX_REFUND_CLUSTERS {
            assert!(r.hold(&format!("k{i}"), 1, 1));
        }
        assert!(!r.hold("new", 1, 1));
        assert!(r.hold("k0", 1, 1));
        assert_eq!(r.held("k0"), 2);

        // A flush that loses every CAS round keeps the refund; the next one writes it.
        let host = Racing {
            inner: TestHost::new(),
            losses: std::cell::Cell::new(0),
        };
        let now = now_seconds(&host);
        let a = admit(&host, &P, "c", 3, &[]);
        let mut r = Refunds::new(P.window_seconds);
        assert!(r.hold("c", a.second, 3));
        host.losses.set(MAX_CAS_TRIES);
        assert_eq!(flush(&host, &P, &mut r), 1);
        assert_eq!(r.held("c"), 3);
        assert_eq!(flush(&host, &P, &mut r), 0);
        assert_eq!(r.held("c"), 0);
        let w = Window::decode(&host.inner.shared(&key("c")).unwrap()).unwrap();
        assert_eq!((w.newest, w.totals()), (now, (1, 0)));
        // An admission carries held refunds in its own write.
        let a = admit(&host, &P, "c", 2, &[]);
        let b = admit(&host, &P, "c", 2, &[(a.second, 2)]);
        assert_eq!(b.granted, 2);
        let w = Window::decode(&host.inner.shared(&key("c")).unwrap()).unwrap();
        assert_eq!(w.totals(), (3, 2));
    }
}
