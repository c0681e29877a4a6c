//! Shadow rules reporting: a candidate rule set is evaluated beside the live one on real
//! traffic, never deciding; per tenant we count traces decided, kept by live, kept by shadow.
//!
//! Shards tally a batch of decisions locally ([`Tally`]) and merge once per batch, so the
//! shared map's lock is taken once per batch, not per decision. Counts restart when the
//! shadow rule set changes (a different source hash).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

/// Counts for one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShadowCounts {
    /// Traces decided while the shadow rules were loaded.
    pub decided: u64,
    /// Of those, kept by the live rules (the real decision).
    pub kept_live: u64,
    /// Of those, the shadow rules would have kept.
    pub kept_shadow: u64,
    /// Decisions where live and shadow disagree.
    pub differ: u64,
}

impl ShadowCounts {
    /// The live keep rate (0 when nothing was decided).
    pub fn live_keep_rate(&self) -> f64 {
        ratio(self.kept_live, self.decided)
    }
    /// The keep rate the shadow rules would have had.
    pub fn shadow_keep_rate(&self) -> f64 {
        ratio(self.kept_shadow, self.decided)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A shard's counts for one batch of decisions.
#[derive(Debug, Default)]
pub struct Tally {
    counts: HashMap<crate::model::TenantId, ShadowCounts>,
}

impl Tally {
    /// Counts one trace: what live decided and what shadow would have.
    pub fn add(&mut self, tenant: &crate::model::TenantId, live_keep: bool, shadow_keep: bool) {
        let c = self.counts.entry(tenant.clone()).or_default();
        c.decided += 1;
        c.kept_live += u64::from(live_keep);
        c.kept_shadow += u64::from(shadow_keep);
        c.differ += u64::from(live_keep != shadow_keep);
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[derive(Debug, Default)]
struct Inner {
    shadow_hash: Option<u64>,
    tenants: BTreeMap<String, ShadowCounts>,
}

/// Per-tenant shadow counts since the current shadow rules were loaded.
#[derive(Debug, Default)]
pub struct ShadowStats {
    inner: Mutex<Inner>,
}

/// A copy of the counts, for the admin API.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShadowReport {
    /// Source hash of the shadow rules the counts belong to.
    pub shadow_hash: Option<u64>,
    /// Counts per tenant.
    pub tenants: BTreeMap<String, ShadowCounts>,
}

impl ShadowStats {
    /// Merges a shard's batch, counted with the shadow set whose source hash is `shadow_hash`.
    pub fn merge(&self, shadow_hash: u64, tally: &mut Tally) {
        if tally.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.shadow_hash != Some(shadow_hash) {
            inner.shadow_hash = Some(shadow_hash);
            inner.tenants.clear();
        }
        for (tenant, c) in tally.counts.drain() {
            let t = inner.tenants.entry(tenant.to_string()).or_default();
            t.decided += c.decided;
            t.kept_live += c.kept_live;
            t.kept_shadow += c.kept_shadow;
            t.differ += c.differ;
        }
    }

    /// The counts so far.
    pub fn report(&self) -> ShadowReport {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ShadowReport {
            shadow_hash: inner.shadow_hash,
            tenants: inner.tenants.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantId;

    #[test]
    fn shadow_counts_accumulate_per_tenant_and_restart_with_new_shadow_rules() {
        let stats = ShadowStats::default();
        let acme = TenantId::new("acme");
        let mut tally = Tally::default();
        tally.add(&acme, true, false);
        tally.add(&acme, true, true);
        tally.add(&TenantId::new("globex"), false, false);
        stats.merge(7, &mut tally);
        assert!(tally.is_empty());
        let report = stats.report();
        let a = report.tenants["acme"];
        assert_eq!(
            (a.decided, a.kept_live, a.kept_shadow, a.differ),
            (2, 2, 1, 1)
        );
        assert_eq!((a.live_keep_rate(), a.shadow_keep_rate()), (1.0, 0.5));
        tally.add(&acme, false, true);
        stats.merge(8, &mut tally);
        let report = stats.report();
        assert_eq!(report.shadow_hash, Some(8));
        assert_eq!(report.tenants.len(), 1);
        assert_eq!(report.tenants["acme"].decided, 1);
    }
}
