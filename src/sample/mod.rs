//! Dynamic samplers: the `[sampler.<name>]` declarations of the rules file brought to life.
//!
//! ```text
//! RuleSet ──sync()──> ShardSamplers (one per buffer shard, owned by its Decider, no locks)
//!                       │ rate(name, trace, now): key fields → Key → core.rate() → Rate
//!                       │ after an adjustment: publish a Snapshot into this shard's slot
//!                       v
//!                     SamplerBoard (one ArcSwap slot per shard) ──merged(name)──> admin API
//! ```
//! The algorithms are the synchronous cores in [`cores`]; this module builds them from specs
//! (throughput goals divided by the number of shards, since trace ids are spread evenly),
//! extracts keys, carries learned state over reloads that leave a sampler's settings alone,
//! and publishes what each shard has learned.

pub mod cores;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::rules::{EmaSpec, KeyFields, RuleSet, SamplerSpec, TraceView};
pub use cores::{
    dither, EmaSampler, EmaSettings, FairSettings, Goal, Key, KeyRate, Rate, Snapshot, TenantFair,
    TenantShare,
};

/// A sampler's settings as they shape its instance: its own spec and, for `tenant_fair`, the
/// spec of its `within_tenant` sampler (a change in either resets it).
#[derive(Clone, Debug, PartialEq)]
struct Resolved {
    spec: SamplerSpec,
    within: Option<SamplerSpec>,
}

enum Core {
    Ema(EmaSampler),
    Fair(Box<TenantFair>),
}

impl Core {
    fn rate(&mut self, key: &Key<'_>, now: Instant) -> Rate {
        match self {
            Core::Ema(s) => s.rate(key, now),
            Core::Fair(s) => s.rate(key, now),
        }
    }
    fn adjustments(&self) -> u64 {
        match self {
            Core::Ema(s) => s.adjustments(),
            Core::Fair(s) => s.adjustments(),
        }
    }
    fn snapshot(&self) -> Snapshot {
        match self {
            Core::Ema(s) => s.snapshot(),
            Core::Fair(s) => s.snapshot(),
        }
    }
    fn rates(&self) -> Vec<(String, Rate)> {
        match self {
            Core::Ema(s) => s.rates(),
            Core::Fair(s) => s.rates(),
        }
    }
}

struct Instance {
    resolved: Resolved,
    /// Fields the key is read from (`None`: the key is the tenant alone).
    key: Option<KeyFields>,
    core: Core,
    published: u64,
}

fn settings(ema: &EmaSpec) -> EmaSettings {
    EmaSettings {
        interval: ema.adjustment_interval,
        weight: ema.weight,
        max_keys: ema.max_keys,
    }
}

impl Instance {
    fn build(resolved: Resolved, shards: usize) -> Instance {
        let shards = shards.max(1) as f64;
        let (key, core) = match &resolved.spec {
            SamplerSpec::EmaDynamic {
                goal_sample_rate,
                ema,
            } => (
                Some(ema.key.clone()),
                Core::Ema(EmaSampler::new(
                    Goal::SampleRate(*goal_sample_rate),
                    settings(ema),
                )),
            ),
            SamplerSpec::EmaThroughput {
                goal_traces_per_sec,
                ema,
            } => (
                Some(ema.key.clone()),
                Core::Ema(EmaSampler::new(
                    Goal::PerSecond(goal_traces_per_sec / shards),
                    settings(ema),
                )),
            ),
            SamplerSpec::TenantFair {
                goal_traces_per_sec,
                min_per_tenant,
                weights,
                ema,
                ..
            } => {
                let within = resolved.within.as_ref().map(|w| w.ema());
                (
                    within.map(|w| w.key.clone()),
                    Core::Fair(Box::new(TenantFair::new(FairSettings {
                        budget_per_sec: goal_traces_per_sec / shards,
                        min_per_tenant: min_per_tenant / shards,
                        weights: weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                        ema: settings(ema),
                        within: within.map(settings),
                    }))),
                )
            }
        };
        Instance {
            resolved,
            key,
            core,
            published: 0,
        }
    }
}

/// One shard's sampler instances; owned by the shard's `Decider`.
pub struct ShardSamplers {
    shards: usize,
    /// Live cluster members the throughput goals were split for (1 on a single node).
    members: usize,
    slot: Option<(Arc<SamplerBoard>, usize)>,
    instances: HashMap<String, Instance>,
    /// Source hash of the rule set the instances were built for.
    built_for: Option<u64>,
    key: String,
}

impl ShardSamplers {
    /// Instances for one of `shards` shards, publishing into `board` slot `index` if given.
    pub fn new(shards: usize, board: Option<(Arc<SamplerBoard>, usize)>) -> Self {
        ShardSamplers {
            shards: shards.max(1),
            members: 1,
            slot: board,
            instances: HashMap::new(),
            built_for: None,
            key: String::new(),
        }
    }

    /// Fresh instances for the same shard count that publish nowhere: for evaluating a
    /// candidate rule set (shadow rules) without disturbing the live samplers.
    pub fn detached(&self) -> Self {
        ShardSamplers::new(self.shards, None)
    }

    /// Brings the instances in line with `rules` (cheap when nothing changed): a sampler whose
    /// settings are unchanged keeps what it learned; a changed one starts over.
    ///
    /// Throughput goals are cluster goals: each shard spends goal ÷ (shards × live members).
    /// When the member count on the board changes, throughput samplers are rebuilt for the
    /// new split (their learned rates start over); other samplers keep theirs.
    pub fn sync(&mut self, rules: &RuleSet) {
        let members = self.slot.as_ref().map_or(1, |(b, _)| b.members());
        let resplit = members != self.members;
        if self.built_for == Some(rules.source_hash()) && !resplit {
            return;
        }
        self.members = members;
        self.built_for = Some(rules.source_hash());
        let divisor = self.shards * self.members;
        let specs = rules.sampler_specs();
        let mut old = std::mem::take(&mut self.instances);
        for (name, spec) in specs {
            let within = match spec {
                SamplerSpec::TenantFair {
                    within_tenant: Some(w),
                    ..
                } => specs.get(w).cloned(),
                _ => None,
            };
            let resolved = Resolved {
                spec: spec.clone(),
                within,
            };
            let throughput = matches!(
                resolved.spec,
                SamplerSpec::EmaThroughput { .. } | SamplerSpec::TenantFair { .. }
            );
            let instance = match old.remove(name) {
                Some(i) if i.resolved == resolved && !(resplit && throughput) => i,
                Some(i) if i.resolved == resolved => {
                    tracing::info!(sampler = %name, members, "cluster membership changed; throughput goal split again");
                    Instance::build(resolved, divisor)
                }
                Some(_) => {
                    tracing::info!(sampler = %name, "sampler settings changed; its learned rates are reset");
                    Instance::build(resolved, divisor)
                }
                None => Instance::build(resolved, divisor),
            };
            self.instances.insert(name.clone(), instance);
        }
        if let Some((board, i)) = &self.slot {
            let kept: HashMap<String, Arc<Published>> = board.shards[*i]
                .load()
                .iter()
                .filter(|(name, _)| {
                    self.instances
                        .get(*name)
                        .is_some_and(|inst| inst.published > 0)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            board.shards[*i].store(Arc::new(kept));
        }
    }

    /// The rate sampler `name` gives `trace` at `now`; `None` for an unknown sampler.
    pub fn rate<T: TraceView>(&mut self, name: &str, trace: &T, now: Instant) -> Option<Rate> {
        let inst = self.instances.get_mut(name)?;
        self.key.clear();
        if let Some(k) = &inst.key {
            k.write_key(trace, &mut self.key);
        }
        let rate = inst.core.rate(
            &Key {
                tenant: trace.tenant(),
                fields: &self.key,
            },
            now,
        );
        if inst.core.adjustments() != inst.published {
            inst.published = inst.core.adjustments();
            if let Some((board, i)) = &self.slot {
                let snapshot = Published {
                    type_name: inst.resolved.spec.type_name(),
                    key_fields: inst
                        .key
                        .as_ref()
                        .map(|k| k.fields().iter().map(|f| f.to_string()).collect())
                        .unwrap_or_default(),
                    snapshot: inst.core.snapshot(),
                };
                let mut map = HashMap::clone(&board.shards[*i].load());
                map.insert(name.to_string(), Arc::new(snapshot));
                board.shards[*i].store(Arc::new(map));
            }
        }
        Some(rate)
    }

    /// Every key's current rate in sampler `name` (tests: comparing across reloads).
    pub fn rates(&self, name: &str) -> Option<Vec<(String, Rate)>> {
        self.instances.get(name).map(|i| i.core.rates())
    }
}

/// What one shard last published for one sampler.
#[derive(Clone, Debug)]
pub struct Published {
    /// The sampler's `type`.
    pub type_name: &'static str,
    /// Its key fields as written.
    pub key_fields: Vec<String>,
    /// What it has learned.
    pub snapshot: Snapshot,
}

/// Where shards publish sampler snapshots and the admin API reads them merged.
pub struct SamplerBoard {
    shards: Vec<ArcSwap<HashMap<String, Arc<Published>>>>,
    members: std::sync::atomic::AtomicUsize,
}

/// A sampler's state merged across shards.
#[derive(Clone, Debug)]
pub struct Merged {
    /// The sampler's `type`.
    pub type_name: &'static str,
    /// Its key fields as written.
    pub key_fields: Vec<String>,
    /// Shards that have published (adjusted at least once).
    pub shards: usize,
    /// Top keys by volume: traces/s summed, rate = traces / expected kept.
    pub keys: Vec<KeyRate>,
    /// Keys tracked, summed over shards (a key seen by two shards counts twice).
    pub key_count: usize,
    /// Traces in overflow buckets.
    pub overflow_traces: u64,
    /// For `tenant_fair`: demand and share per tenant, summed over shards.
    pub tenants: Vec<TenantShare>,
}

impl SamplerBoard {
    /// A board with one slot per shard.
    pub fn new(shards: usize) -> Arc<SamplerBoard> {
        Arc::new(SamplerBoard {
            shards: (0..shards.max(1)).map(|_| ArcSwap::default()).collect(),
            members: std::sync::atomic::AtomicUsize::new(1),
        })
    }

    /// Tells every shard how many live cluster members share the throughput goals (called
    /// on every membership change; 0 counts as 1). Shards re-split at their next decision.
    pub fn set_members(&self, n: usize) {
        self.members
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Live cluster members the goals are split across.
    pub fn members(&self) -> usize {
        self.members.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The named sampler merged over every shard that published it.
    pub fn merged(&self, name: &str) -> Option<Merged> {
        let parts: Vec<Arc<Published>> = self
            .shards
            .iter()
            .filter_map(|s| s.load().get(name).cloned())
            .collect();
        let first = parts.first()?;
        let mut keys: HashMap<&str, (f64, f64, u64)> = HashMap::new();
        let mut tenants: HashMap<&str, TenantShare> = HashMap::new();
        for p in &parts {
            for k in &p.snapshot.keys {
                let e = keys.entry(&k.key).or_default();
                e.0 += k.traces_per_sec;
                e.1 += k.traces_per_sec / k.rate.max(1.0);
                e.2 += k.traces;
            }
            for t in &p.snapshot.tenants {
                let e = tenants.entry(&t.tenant).or_insert(TenantShare {
                    tenant: t.tenant.clone(),
                    traces_per_sec: 0.0,
                    share_per_sec: 0.0,
                    weight: t.weight,
                });
                e.traces_per_sec += t.traces_per_sec;
                e.share_per_sec += t.share_per_sec;
            }
        }
        let mut keys: Vec<KeyRate> = keys
            .into_iter()
            .map(|(k, (tps, kept, traces))| KeyRate {
                key: k.to_string(),
                traces_per_sec: tps,
                rate: if kept > 0.0 { tps / kept } else { 1.0 },
                traces,
            })
            .collect();
        keys.sort_by(|a, b| {
            b.traces_per_sec
                .total_cmp(&a.traces_per_sec)
                .then(b.traces.cmp(&a.traces))
        });
        keys.truncate(cores::SNAPSHOT_KEYS);
        let mut tenants: Vec<TenantShare> = tenants.into_values().collect();
        tenants.sort_by(|a, b| b.traces_per_sec.total_cmp(&a.traces_per_sec));
        Some(Merged {
            type_name: first.type_name,
            key_fields: first.key_fields.clone(),
            shards: parts.len(),
            keys,
            key_count: parts.iter().map(|p| p.snapshot.key_count).sum(),
            overflow_traces: parts.iter().map(|p| p.snapshot.overflow_traces).sum(),
            tenants,
        })
    }
}

#[cfg(test)]
mod tests;
