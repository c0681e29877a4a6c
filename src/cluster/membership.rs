//! Who the members of the cluster are, and who owns a trace id.
//!
//! A provider (static list, DNS, Redis) publishes the advertise addresses of the live members
//! into a [`MembershipHandle`]; routing reads one [`Members`] snapshot per request (`ArcSwap`),
//! so a membership change never blocks ingest.
//!
//! **Ownership** is rendezvous (highest random weight) hashing. Every member has a seed, the
//! 64-bit FNV-1a hash of its advertise address as UTF-8 bytes. A trace id's key is
//! [`TraceId::hash64`] (the two halves folded and finished with splitmix64). A member's score
//! for a trace id is `splitmix64(seed XOR key)`; the member with the highest score owns the
//! trace (ties, which need equal seeds, go to the smaller address). This is fixed for every
//! version of a minor release: nodes of the same cluster must agree on it. A join moves
//! ~1/(N+1) of the trace ids, all of them to the newcomer; a leave moves only the leaver's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::model::TraceId;

/// The 64-bit FNV-1a hash of a member's advertise address: its rendezvous seed.
pub fn member_seed(addr: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: spreads `seed XOR key` into a member's score.
pub fn score(seed: u64, key: u64) -> u64 {
    let mut z = (seed ^ key).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One snapshot of the live members: sorted, deduplicated advertise addresses.
#[derive(Debug)]
pub struct Members {
    addrs: Vec<String>,
    seeds: Vec<u64>,
    self_index: Option<usize>,
    version: u64,
}

impl Members {
    /// A snapshot of `addrs` (sorted and deduplicated here) as seen by the node `me`.
    pub fn new(mut addrs: Vec<String>, me: &str, version: u64) -> Members {
        addrs.sort();
        addrs.dedup();
        let seeds = addrs.iter().map(|a| member_seed(a)).collect();
        let self_index = addrs.iter().position(|a| a == me);
        Members {
            addrs,
            seeds,
            self_index,
            version,
        }
    }

    /// The member addresses, sorted.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Number of live members (at least 1: a node that sees nobody counts itself).
    pub fn count(&self) -> usize {
        self.addrs.len().max(1)
    }

    /// This node's position in [`Members::addrs`], when it is a member.
    pub fn self_index(&self) -> Option<usize> {
        self.self_index
    }

    /// Increases with every published change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The index of the member that owns `trace_id`; `None` when there are no members.
    pub fn owner(&self, trace_id: &TraceId) -> Option<usize> {
        let key = trace_id.hash64();
        let mut best: Option<(u64, usize)> = None;
        for (i, seed) in self.seeds.iter().enumerate() {
            let s = score(*seed, key);
            // Strictly greater: on a tie the earlier (smaller) address keeps it.
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// True when this node owns `trace_id` (also when no member is known at all).
    pub fn is_local(&self, trace_id: &TraceId) -> bool {
        match self.owner(trace_id) {
            None => true,
            Some(i) => Some(i) == self.self_index,
        }
    }

    /// The address of the owner of `trace_id`, `None` when that is this node.
    pub fn remote_owner(&self, trace_id: &TraceId) -> Option<&str> {
        let i = self.owner(trace_id)?;
        if Some(i) == self.self_index {
            None
        } else {
            Some(&self.addrs[i])
        }
    }
}

/// Health of the membership source, for `GET /api/v1/cluster`, `/readyz` details and metrics.
#[derive(Debug, Default)]
pub struct ProviderStatus {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    last_ok_unix_ms: AtomicU64,
    errors: AtomicU64,
    changes: AtomicU64,
}

/// A copy of [`ProviderStatus`] for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProviderReport {
    /// The last attempt to read membership succeeded.
    pub healthy: bool,
    /// What went wrong last, when not healthy.
    pub last_error: Option<String>,
    /// When membership was last read successfully (Unix ms; 0 = never).
    pub last_ok_unix_ms: u64,
    /// Failed attempts since start.
    pub errors: u64,
    /// Changes of the member set since start.
    pub changes: u64,
}

/// Where a membership provider publishes what it sees; routing reads [`MembershipHandle::current`].
pub struct MembershipHandle {
    me: String,
    current: ArcSwap<Members>,
    status: ProviderStatus,
    changed: watch::Sender<u64>,
    /// What the provider last listed, before announcements are applied.
    provided: Mutex<Vec<String>>,
    /// Members that announced they are leaving; left out until they announce they are back
    /// (or the provider stops listing them).
    departed: Mutex<std::collections::BTreeSet<String>>,
    /// This node is leaving: it lists itself no more, whatever the provider says.
    leaving: AtomicBool,
    /// Members whose calls have all failed for `peer_down_after`: left out until they answer
    /// again (a probe) or announce they are back.
    suspected: Mutex<std::collections::BTreeSet<String>>,
}

impl MembershipHandle {
    /// A handle for the node advertised as `me`, starting with `initial` members.
    pub fn new(me: &str, initial: Vec<String>) -> Arc<MembershipHandle> {
        let members = Members::new(initial.clone(), me, 0);
        let (changed, _) = watch::channel(0);
        Arc::new(MembershipHandle {
            me: me.to_string(),
            current: ArcSwap::from_pointee(members),
            status: ProviderStatus::default(),
            changed,
            provided: Mutex::new(initial),
            departed: Mutex::default(),
            leaving: AtomicBool::new(false),
            suspected: Mutex::default(),
        })
    }

    /// A peer announced it is leaving (`true`) or back in service (`false`).
    pub fn announce(&self, addr: &str, leaving: bool) {
        if addr == self.me {
            return;
        }
        let mut changed = false;
        if let Ok(mut d) = self.departed.lock() {
            changed |= if leaving {
                d.insert(addr.to_string())
            } else {
                d.remove(addr)
            };
        }
        if !leaving {
            if let Ok(mut s) = self.suspected.lock() {
                changed |= s.remove(addr);
            }
        }
        if !changed {
            return;
        }
        tracing::info!(peer = addr, leaving, "peer announced a membership change");
        self.apply();
    }

    /// Every call to `addr` has failed for too long: leave it out (its share goes to the
    /// others) until it answers a probe or announces it is back.
    pub fn suspect(&self, addr: &str) {
        if addr == self.me {
            return;
        }
        let added = self
            .suspected
            .lock()
            .map(|mut s| s.insert(addr.to_string()))
            .unwrap_or(false);
        if added {
            tracing::warn!(
                peer = addr,
                "peer unreachable for too long; routing its share to the others until it answers"
            );
            self.apply();
        }
    }

    /// Members left out because they stopped answering (probed to be let back in).
    pub fn suspected(&self) -> Vec<String> {
        self.suspected
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// This node is leaving: from now on it is not among its own members, so everything it
    /// holds is owned elsewhere.
    pub fn leave(&self) {
        self.leaving.store(true, Relaxed);
        self.apply();
    }

    /// True once [`MembershipHandle::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Relaxed)
    }

    /// What the provider lists, announcements not applied (everyone an announcement must
    /// reach, departed members included).
    pub fn provided(&self) -> Vec<String> {
        self.provided.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Members that announced they are leaving and are still left out.
    pub fn departed(&self) -> Vec<String> {
        self.departed
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Recomputes the members from what the provider listed and the announcements.
    fn apply(&self) {
        let provided = self.provided.lock().map(|p| p.clone()).unwrap_or_default();
        let mut departed = self.departed.lock().map(|d| d.clone()).unwrap_or_default();
        if let Ok(s) = self.suspected.lock() {
            departed.extend(s.iter().cloned());
        }
        let leaving = self.leaving.load(Relaxed);
        let effective: Vec<String> = provided
            .into_iter()
            .filter(|a| !(departed.contains(a) || (leaving && *a == self.me)))
            .collect();
        self.store(effective);
    }

    /// This node's advertise address.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Members> {
        self.current.load_full()
    }

    /// Publishes what the provider saw; a set equal to the current one changes nothing.
    /// Marks the provider healthy.
    pub fn publish(&self, addrs: Vec<String>) {
        self.report_ok();
        if let Ok(mut d) = self.departed.lock() {
            // A departed member the provider no longer lists is forgotten: when it is listed
            // again, it is a new arrival.
            d.retain(|a| addrs.contains(a));
        }
        if let Ok(mut s) = self.suspected.lock() {
            s.retain(|a| addrs.contains(a));
        }
        if let Ok(mut p) = self.provided.lock() {
            p.clone_from(&addrs);
        }
        self.apply();
    }

    /// Stores an effective member set; an equal set changes nothing.
    fn store(&self, addrs: Vec<String>) {
        let old = self.current.load();
        let mut sorted = addrs;
        sorted.sort();
        sorted.dedup();
        if sorted == old.addrs {
            return;
        }
        let version = old.version + 1;
        tracing::info!(members = ?sorted, version, "cluster membership changed");
        self.current
            .store(Arc::new(Members::new(sorted, &self.me, version)));
        self.status.changes.fetch_add(1, Relaxed);
        self.changed.send_replace(version);
    }

    /// Records a successful read of membership that found no change.
    pub fn report_ok(&self) {
        self.status.healthy.store(true, Relaxed);
        self.status
            .last_ok_unix_ms
            .store(crate::tags::unix_ms(std::time::SystemTime::now()), Relaxed);
        if let Ok(mut e) = self.status.last_error.lock() {
            *e = None;
        }
    }

    /// Records a failed read; the last known members stay in force.
    pub fn report_error(&self, error: &str) {
        let was_healthy = self.status.healthy.swap(false, Relaxed);
        self.status.errors.fetch_add(1, Relaxed);
        if was_healthy {
            tracing::warn!(
                error,
                "cluster membership source failed; keeping the last known members"
            );
        }
        if let Ok(mut e) = self.status.last_error.lock() {
            *e = Some(error.to_string());
        }
    }

    /// A copy of the provider's health.
    pub fn report(&self) -> ProviderReport {
        ProviderReport {
            healthy: self.status.healthy.load(Relaxed),
            last_error: self.status.last_error.lock().ok().and_then(|e| e.clone()),
            last_ok_unix_ms: self.status.last_ok_unix_ms.load(Relaxed),
            errors: self.status.errors.load(Relaxed),
            changes: self.status.changes.load(Relaxed),
        }
    }

    /// Waits until the provider has read membership once (or has failed to, `false` after
    /// `limit`), so a starting node does not own every trace while it knows no one.
    pub async fn wait_first_read(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.status.last_ok_unix_ms.load(Relaxed) == 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Wakes on every change of the member set.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<TraceId> {
        (0..n as u64)
            .map(|i| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&score(i, 7).to_le_bytes());
                b[8..].copy_from_slice(&score(i, 11).to_le_bytes());
                TraceId(b)
            })
            .collect()
    }

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:4319")).collect()
    }

    #[test]
    fn every_node_computes_the_same_owner_whatever_order_it_learned_members_in() {
        let a = Members::new(addrs(3), "10.0.0.0:4319", 1);
        let mut rev = addrs(3);
        rev.reverse();
        let b = Members::new(rev, "10.0.0.2:4319", 1);
        for id in ids(1000) {
            assert_eq!(a.owner(&id), b.owner(&id));
        }
    }

    #[test]
    fn shares_are_even() {
        let m = Members::new(addrs(3), "x", 1);
        let mut counts = [0usize; 3];
        for id in ids(30_000) {
            counts[m.owner(&id).unwrap()] += 1;
        }
        for c in counts {
            // 10,000 expected; 5 standard deviations is ~±410.
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_join_moves_only_ids_to_the_newcomer_and_a_leave_only_the_leavers() {
        let three = Members::new(addrs(3), "x", 1);
        let four = Members::new(addrs(4), "x", 2);
        let mut moved = 0;
        for id in ids(20_000) {
            let before = &three.addrs()[three.owner(&id).unwrap()];
            let after = &four.addrs()[four.owner(&id).unwrap()];
            if before != after {
                assert_eq!(after, "10.0.0.3:4319");
                moved += 1;
            }
        }
        // A quarter expected: 5,000 ± 5 sd (~306).
        assert!((4_600..=5_400).contains(&moved), "{moved}");
        let two: Vec<String> = vec![addrs(3)[0].clone(), addrs(3)[2].clone()];
        let two = Members::new(two, "x", 3);
        for id in ids(20_000) {
            let before = &three.addrs()[three.owner(&id).unwrap()];
            let after = &two.addrs()[two.owner(&id).unwrap()];
            if before != "10.0.0.1:4319" {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn the_hash_is_pinned() {
        // The owner function is part of the wire contract between nodes: changing it splits
        // traces during a rolling upgrade. These values must never change within a minor.
        assert_eq!(member_seed("10.1.2.3:4319"), 0x61a3_8d7e_80ff_c657);
        let id = TraceId([0x5b; 16]);
        assert_eq!(
            score(member_seed("10.1.2.3:4319"), id.hash64()),
            0x0e29_179a_7cce_58fe
        );
    }

    #[test]
    fn a_peer_that_announced_its_leave_stays_out_until_it_announces_it_is_back() {
        let h = MembershipHandle::new("a:1", vec![]);
        h.publish(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        h.announce("b:1", true);
        assert_eq!(h.current().addrs(), ["a:1", "c:1"]);
        // The static list (or DNS) still names it: it stays out.
        h.publish(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        assert_eq!(h.current().addrs(), ["a:1", "c:1"]);
        h.announce("b:1", false);
        assert_eq!(h.current().addrs(), ["a:1", "b:1", "c:1"]);
        // Gone from the provider while departed: forgotten, so its return counts.
        h.announce("c:1", true);
        h.publish(vec!["a:1".into(), "b:1".into()]);
        h.publish(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        assert_eq!(h.current().addrs(), ["a:1", "b:1", "c:1"]);
        // Leaving, this node owns nothing.
        h.leave();
        assert_eq!(h.current().addrs(), ["b:1", "c:1"]);
        assert_eq!(h.current().self_index(), None);
    }

    #[test]
    fn publishing_the_same_set_is_not_a_change() {
        let h = MembershipHandle::new("a:1", vec!["a:1".into()]);
        let rx = h.subscribe();
        h.publish(vec!["a:1".into()]);
        assert!(!rx.has_changed().unwrap());
        h.publish(vec!["b:1".into(), "a:1".into()]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(h.current().addrs(), ["a:1", "b:1"]);
        assert_eq!(h.current().self_index(), Some(0));
    }
}
