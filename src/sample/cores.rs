//! The synchronous sampler cores: no locks, no clocks (`now` is a parameter), no I/O.
//!
//! Each core counts traces per key during an adjustment interval; at the interval boundary
//! (`adjust`) it folds the counts into an exponential moving average (EMA) and recomputes a
//! target rate per key. Between boundaries `rate` is a hash lookup and a counter increment.
//!
//! Rates are real numbers ≥ 1 ([`Rate`]). A trace still gets an integer rate, so that the
//! `SampleRate` written on its spans is exactly the inverse of its keep probability: [`Rate::pick`]
//! chooses ⌊r⌋ or ⌈r⌉ from bits of the trace id with the mix that keeps 1/r on average. That
//! keeps counts unbiased and throughput on target even where the ideal rate is 1.3.
//!
//! How a rate is chosen per key (Refinery's log-scaled allocation, solved exactly): a key seen
//! `c` times per interval (EMA) is given a kept goal `g(c) = max(min(c, 1), log10(c) · k)`,
//! capped at `c`, and `k` is found by bisection so that Σ g = the interval's goal. Its rate is
//! `c / g(c)`. Rare keys keep everything; every key seen at least once per interval keeps at
//! least one trace per interval on average; frequent keys are sampled hardest.
//!
//! **Cold start.** A throughput sampler (`ema_throughput`, `tenant_fair`) with no history yet
//! must not keep everything until its first adjustment (15 s by default): every start, deploy
//! or scale-out under a flood would send that much unsampled traffic. Until its first
//! adjustment it estimates demand every [`COLD_STEP`] from what it counted so far and sets
//! provisional rates for its goal; in the first step, before any estimate, the n-th trace gets
//! rate max(1, (n/A)²) with A = half the step's budget, which keeps about one step's budget in
//! expectation however large the flood. Each kept trace's `SampleRate` is its own rate, so
//! counts stay unbiased.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Which key a trace falls under: its tenant, and the rendered key fields.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    /// The trace's tenant (what `tenant_fair` splits by).
    pub tenant: &'a str,
    /// The values of the sampler's key fields, joined by [`KEY_SEPARATOR`].
    pub fields: &'a str,
}

/// Separates key field values in [`Key::fields`] (ASCII unit separator: never in real values).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// A target sample rate: keep 1 trace in `r`, `r` ≥ 1 and finite.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Rate(f64);

impl Rate {
    /// Keep everything.
    pub const ONE: Rate = Rate(1.0);

    /// A rate, clamped to ≥ 1 (non-finite values become 1).
    pub fn new(r: f64) -> Rate {
        if r.is_finite() && r > 1.0 {
            Rate(r)
        } else {
            Rate::ONE
        }
    }

    /// The harder of two rates.
    pub fn max(self, other: Rate) -> Rate {
        if other.0 > self.0 {
            other
        } else {
            self
        }
    }

    /// The rate as a number.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The integer rate of one trace: ⌊r⌋ or ⌈r⌉, chosen by `dither` (64 bits that do not
    /// depend on the trace's sampling randomness) so that the keep probability averages 1/r:
    /// ⌊r⌋ is chosen with probability q = f(f+1)/r − f, where f = ⌊r⌋.
    pub fn pick(self, dither: u64) -> u64 {
        let f = self.0.floor();
        if f >= 1e15 {
            return f as u64;
        }
        let q = f * (f + 1.0) / self.0 - f;
        let u = (dither >> 11) as f64 / (1u64 << 53) as f64;
        if u < q {
            f as u64
        } else {
            f as u64 + 1
        }
    }
}

/// 64 dither bits from a trace id, independent in practice of its low 56 bits' magnitude
/// (the consistent-sampling randomness): a SplitMix64 finalizer over both halves.
pub fn dither(trace_id: &[u8; 16]) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&trace_id[..8]);
    lo.copy_from_slice(&trace_id[8..]);
    mix(u64::from_be_bytes(hi) ^ mix(u64::from_be_bytes(lo) ^ 0x5851_f42d_4c95_7f2d))
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How often a cold throughput sampler re-estimates demand before its first adjustment.
pub const COLD_STEP: Duration = Duration::from_millis(250);

/// What a throughput sampler tracks before its first adjustment.
#[derive(Clone, Debug, Default)]
struct ColdStart {
    /// Traces counted while cold.
    seen: u64,
    /// Provisional estimates made.
    steps: u32,
    /// The overall rate of the last estimate, given to keys first seen after it.
    uniform: Option<Rate>,
}

impl ColdStart {
    /// The rate of the n-th trace of the first step, for a step budget of `step_budget`.
    fn first_step_rate(&self, step_budget: f64) -> Rate {
        let a = (step_budget / 2.0).max(1.0);
        let x = self.seen as f64 / a;
        Rate::new(x * x)
    }

    /// Counts one more cold trace and caps `rate` while no estimate exists yet.
    fn cap(&mut self, rate: Rate, step_budget: f64) -> Rate {
        self.seen += 1;
        if self.steps > 0 {
            rate
        } else {
            rate.max(self.first_step_rate(step_budget))
        }
    }

    /// Whether the estimate due at `elapsed` into the cold interval is still to be made.
    fn step_due(&self, elapsed: Duration, step: Duration) -> bool {
        elapsed >= step * (self.steps + 1)
    }
}

/// An EMA below this (traces per interval) with no new traffic is forgotten.
const AGE_OUT: f64 = 0.5;
/// Keys listed in a snapshot.
pub const SNAPSHOT_KEYS: usize = 100;
/// Label of the bucket shared by keys beyond `max_keys`.
pub const OVERFLOW_KEY: &str = "(overflow)";

/// How an EMA sampler learns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaSettings {
    /// Time between adjustments.
    pub interval: Duration,
    /// Weight of the newest interval in the moving average, in (0, 1].
    pub weight: f64,
    /// Distinct keys tracked; traces of further keys share one overflow bucket.
    pub max_keys: usize,
}

/// What an EMA sampler aims at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// Keep about 1 trace in N overall.
    SampleRate(f64),
    /// Keep about this many traces per second overall.
    PerSecond(f64),
}

#[derive(Clone, Debug)]
struct KeyState {
    /// Traces this interval.
    count: u64,
    /// Moving average of traces per interval; `None` until the key's first adjustment.
    ema: Option<f64>,
    /// Current target rate.
    rate: Rate,
    /// Traces since the key was first seen.
    total: u64,
}

impl KeyState {
    fn new(rate: Rate) -> Self {
        KeyState {
            count: 0,
            ema: None,
            rate,
            total: 0,
        }
    }
}

/// One key as an admin snapshot shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRate {
    /// The key field values (or [`OVERFLOW_KEY`]).
    pub key: String,
    /// Moving average of traces per second.
    pub traces_per_sec: f64,
    /// Current target rate.
    pub rate: f64,
    /// Traces seen since the key was first seen.
    pub traces: u64,
}

/// What one sampler instance has learned, published at each adjustment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Top keys by volume.
    pub keys: Vec<KeyRate>,
    /// Keys tracked.
    pub key_count: usize,
    /// Traces that fell into the overflow bucket since start.
    pub overflow_traces: u64,
    /// For `tenant_fair`: each tenant's demand and share.
    pub tenants: Vec<TenantShare>,
}

/// A tenant's part of a `tenant_fair` budget.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantShare {
    /// The tenant id.
    pub tenant: String,
    /// Traces per second it sends (moving average).
    pub traces_per_sec: f64,
    /// Traces per second it may keep.
    pub share_per_sec: f64,
    /// Its weight.
    pub weight: f64,
}

/// The EMA sampler behind `ema_dynamic` (goal: a sample rate) and `ema_throughput` (goal:
/// kept traces per second).
#[derive(Clone, Debug)]
pub struct EmaSampler {
    goal: Goal,
    settings: EmaSettings,
    keys: HashMap<Box<str>, KeyState>,
    overflow: KeyState,
    overflow_traces: u64,
    /// When the current interval began; `None` before the first trace.
    started: Option<Instant>,
    /// Whether rates were ever computed (before that, the cold-start rate applies).
    warm: bool,
    /// Adjustments made, so a driver can tell when to publish a snapshot.
    adjustments: u64,
    /// Budget control until the first adjustment.
    cold: ColdStart,
}

impl EmaSampler {
    /// A sampler with nothing learned.
    pub fn new(goal: Goal, settings: EmaSettings) -> Self {
        let settings = EmaSettings {
            interval: settings.interval.max(Duration::from_millis(1)),
            weight: if settings.weight > 0.0 && settings.weight <= 1.0 {
                settings.weight
            } else {
                0.5
            },
            max_keys: settings.max_keys.max(1),
        };
        EmaSampler {
            goal,
            settings,
            keys: HashMap::new(),
            overflow: KeyState::new(Rate::ONE),
            overflow_traces: 0,
            started: None,
            warm: false,
            adjustments: 0,
            cold: ColdStart::default(),
        }
    }

    /// Adjustments made so far.
    pub fn adjustments(&self) -> u64 {
        self.adjustments
    }

    /// True while a finite per-second goal has no history to spend it by.
    fn cold_capped(&self) -> bool {
        !self.warm && matches!(self.goal, Goal::PerSecond(g) if g.is_finite())
    }

    /// The cold re-estimation step: [`COLD_STEP`], or the interval when that is shorter.
    fn cold_step(&self) -> Duration {
        COLD_STEP.min(self.settings.interval)
    }

    /// Traces counted in the current interval over all keys.
    fn pending(&self) -> u64 {
        self.keys.values().map(|s| s.count).sum::<u64>() + self.overflow.count
    }

    /// Provisional rates before the first adjustment, from the counts of the `elapsed` part of
    /// the interval scaled to a whole one; counts and averages are left alone.
    fn provisional(&mut self, elapsed: Duration) {
        let scale = self.settings.interval.as_secs_f64() / elapsed.as_secs_f64().max(1e-3);
        let estimates: Vec<f64> = self
            .keys
            .values()
            .chain(std::iter::once(&self.overflow))
            .map(|s| s.count as f64 * scale)
            .collect();
        let total: f64 = estimates.iter().sum();
        let goal = self.goal_per_interval(total);
        let k = solve_log_allocation(&estimates, goal);
        for (s, c) in self
            .keys
            .values_mut()
            .chain(std::iter::once(&mut self.overflow))
            .zip(estimates)
        {
            s.rate = rate_for(c, k);
        }
        self.cold.uniform = Some(if goal > 0.0 {
            Rate::new(total / goal)
        } else {
            Rate::ONE
        });
        self.cold.steps += 1;
    }

    /// The goal.
    pub fn goal(&self) -> Goal {
        self.goal
    }

    /// Changes the goal; takes effect at the next adjustment (`tenant_fair` moves shares).
    pub fn set_goal(&mut self, goal: Goal) {
        self.goal = goal;
    }

    /// The rate for a trace of `key` at `now`; adjusts first when an interval has ended.
    pub fn rate(&mut self, key: &Key<'_>, now: Instant) -> Rate {
        match self.started {
            None => self.started = Some(now),
            Some(s) => {
                let elapsed = now.saturating_duration_since(s);
                if elapsed >= self.settings.interval {
                    self.adjust(now)
                } else if self.cold_capped() && self.cold.step_due(elapsed, self.cold_step()) {
                    self.provisional(elapsed)
                }
            }
        }
        let rate = self.count(key.fields);
        if !self.cold_capped() {
            return rate;
        }
        let step_budget = match self.goal {
            Goal::PerSecond(g) => g * self.cold_step().as_secs_f64(),
            Goal::SampleRate(_) => f64::INFINITY,
        };
        self.cold.cap(rate, step_budget)
    }

    /// Counts a trace of `fields` and returns its key's current rate (no clock involved).
    pub fn count(&mut self, fields: &str) -> Rate {
        if let Some(state) = self.keys.get_mut(fields) {
            state.count += 1;
            state.total += 1;
            return state.rate;
        }
        let cold = self.cold_rate();
        let state = if self.keys.len() < self.settings.max_keys {
            self.keys
                .entry(fields.into())
                .or_insert(KeyState::new(cold))
        } else {
            self.overflow_traces += 1;
            &mut self.overflow
        };
        state.count += 1;
        state.total += 1;
        state.rate
    }

    /// The rate of a key not seen before: 1 once warm (rare keys are kept); before the first
    /// adjustment, the goal's rate for a sample-rate goal and the last provisional overall
    /// rate for a throughput goal (nothing known about the key yet).
    fn cold_rate(&self) -> Rate {
        match (self.warm, self.goal) {
            (false, Goal::SampleRate(r)) => Rate::new(r),
            (false, Goal::PerSecond(_)) => self.cold.uniform.unwrap_or(Rate::ONE),
            _ => Rate::ONE,
        }
    }

    /// Ends the interval at `now`: folds counts into the moving averages, forgets idle keys
    /// and recomputes every key's rate.
    pub fn adjust(&mut self, now: Instant) {
        let started = self.started.unwrap_or(now);
        let elapsed = now.saturating_duration_since(started);
        // A quiet gap spanning several intervals counts as that many intervals.
        let intervals = (elapsed.as_secs_f64() / self.settings.interval.as_secs_f64()).max(1.0);
        let w = self.settings.weight;
        let fold = |s: &mut KeyState| {
            let c = s.count as f64 / intervals;
            s.ema = Some(match s.ema {
                None => c,
                Some(e) => w * c + (1.0 - w) * e,
            });
            let idle = s.count == 0;
            s.count = 0;
            idle
        };
        self.keys.retain(|_, s| {
            let idle = fold(s);
            !(idle && s.ema.unwrap_or(0.0) < AGE_OUT)
        });
        fold(&mut self.overflow);
        self.started = Some(now);
        self.warm = true;
        self.adjustments += 1;
        self.reallocate();
    }

    /// Kept traces per interval the goal asks for, given `total` traces per interval.
    fn goal_per_interval(&self, total: f64) -> f64 {
        match self.goal {
            Goal::SampleRate(r) => total / r.max(1.0),
            Goal::PerSecond(p) => p.max(0.0) * self.settings.interval.as_secs_f64(),
        }
    }

    fn reallocate(&mut self) {
        let counts: Vec<f64> = self
            .keys
            .values()
            .chain(std::iter::once(&self.overflow))
            .map(|s| s.ema.unwrap_or(0.0))
            .collect();
        let total: f64 = counts.iter().sum();
        let k = solve_log_allocation(&counts, self.goal_per_interval(total));
        for s in self
            .keys
            .values_mut()
            .chain(std::iter::once(&mut self.overflow))
        {
            s.rate = rate_for(s.ema.unwrap_or(0.0), k);
        }
    }

    /// Traces per second (moving average) over all keys.
    pub fn traces_per_sec(&self) -> f64 {
        let total: f64 = self
            .keys
            .values()
            .chain(std::iter::once(&self.overflow))
            .map(|s| s.ema.unwrap_or(0.0))
            .sum();
        total / self.settings.interval.as_secs_f64()
    }

    /// The current rate of a key, without counting (tests, admin).
    pub fn current_rate(&self, fields: &str) -> Option<Rate> {
        self.keys.get(fields).map(|s| s.rate)
    }

    /// Every key's current rate, for comparisons across reloads.
    pub fn rates(&self) -> Vec<(String, Rate)> {
        let mut v: Vec<_> = self
            .keys
            .iter()
            .map(|(k, s)| (k.to_string(), s.rate))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Top keys by volume, for the admin API.
    pub fn snapshot(&self) -> Snapshot {
        let secs = self.settings.interval.as_secs_f64();
        let mut keys: Vec<KeyRate> = self
            .keys
            .iter()
            .map(|(k, s)| (k.as_ref(), s))
            .chain((self.overflow.total > 0).then_some((OVERFLOW_KEY, &self.overflow)))
            .map(|(k, s)| KeyRate {
                key: k.to_string(),
                traces_per_sec: s.ema.unwrap_or(0.0) / secs,
                rate: s.rate.get(),
                traces: s.total,
            })
            .collect();
        keys.sort_by(|a, b| {
            b.traces_per_sec
                .total_cmp(&a.traces_per_sec)
                .then(b.traces.cmp(&a.traces))
        });
        keys.truncate(SNAPSHOT_KEYS);
        Snapshot {
            keys,
            key_count: self.keys.len(),
            overflow_traces: self.overflow_traces,
            tenants: Vec::new(),
        }
    }
}

/// The kept goal of a key seen `c` times per interval, for allocation factor `k`.
fn kept_goal(c: f64, k: f64) -> f64 {
    if c <= 0.0 {
        return 0.0;
    }
    (c.log10() * k).max(c.min(1.0)).min(c)
}

fn rate_for(c: f64, k: f64) -> Rate {
    if c <= 0.0 {
        return Rate::ONE;
    }
    Rate::new(c / kept_goal(c, k))
}

/// Finds the factor `k` for which Σ kept_goal(c, k) = `goal` (bisection; Σ grows with `k`).
/// Keeping everything when the goal allows it (`k` = ∞ in effect).
fn solve_log_allocation(counts: &[f64], goal: f64) -> f64 {
    let total: f64 = counts.iter().sum();
    // (floor, log10 c, c) per key, so each bisection step is multiply-adds only.
    let parts: Vec<(f64, f64, f64)> = counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| (c.min(1.0), c.log10(), c))
        .collect();
    let kept = |k: f64| {
        parts
            .iter()
            .map(|&(floor, log, c)| (log * k).max(floor).min(c))
            .sum::<f64>()
    };
    if goal >= total {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while kept(hi) < goal {
        hi *= 2.0;
        if hi > 1e18 {
            return f64::INFINITY;
        }
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if kept(mid) < goal {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// How `tenant_fair` splits its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct FairSettings {
    /// Kept traces per second shared by all tenants.
    pub budget_per_sec: f64,
    /// Every active tenant may keep at least this many per second (if it sends that many).
    pub min_per_tenant: f64,
    /// Tenant weights; others weigh 1.
    pub weights: HashMap<String, f64>,
    /// Interval, EMA weight, and the most tenants tracked.
    pub ema: EmaSettings,
    /// How each tenant's share is spent: an EMA sampler with these settings (goal replaced by
    /// the share), or `None` for one uniform rate per tenant.
    pub within: Option<EmaSettings>,
}

struct TenantState {
    /// Traces of this tenant, by within-tenant key (or one key when there is no within).
    inner: EmaSampler,
    weight: f64,
    share: f64,
}

/// `tenant_fair`: a budget of kept traces per second split between tenants by weighted
/// max-min fairness (a tenant that sends less than its share keeps all it sends and the rest
/// is shared by the others; one tenant's flood cannot shrink anyone else's share), with a
/// floor of `min_per_tenant` for every active tenant, each share spent by an EMA sampler.
pub struct TenantFair {
    settings: FairSettings,
    tenants: HashMap<Box<str>, TenantState>,
    overflow: TenantState,
    overflow_traces: u64,
    started: Option<Instant>,
    warm: bool,
    adjustments: u64,
    /// Budget control until the first adjustment.
    cold: ColdStart,
}

impl TenantFair {
    /// A sampler with nothing learned.
    pub fn new(settings: FairSettings) -> Self {
        let overflow = Self::tenant(&settings, OVERFLOW_KEY);
        TenantFair {
            settings,
            tenants: HashMap::new(),
            overflow,
            overflow_traces: 0,
            started: None,
            warm: false,
            adjustments: 0,
            cold: ColdStart::default(),
        }
    }

    /// Adjustments made so far.
    pub fn adjustments(&self) -> u64 {
        self.adjustments
    }

    /// True while a finite budget has no history to spend it by.
    fn cold_capped(&self) -> bool {
        !self.warm && self.settings.budget_per_sec.is_finite()
    }

    fn cold_step(&self) -> Duration {
        COLD_STEP.min(self.settings.ema.interval)
    }

    /// Every tenant's share of the budget (the overflow bucket last) for the demand (traces
    /// per second) `demand` gives each, and the total demand.
    fn shares_for(&self, demand: impl Fn(&TenantState) -> f64) -> (Vec<f64>, f64) {
        let demands: Vec<(f64, f64)> = self
            .tenants
            .values()
            .chain(std::iter::once(&self.overflow))
            .map(|t| (demand(t), t.weight))
            .collect();
        let total = demands.iter().map(|d| d.0).sum();
        let shares = max_min_shares(
            &demands,
            self.settings.budget_per_sec,
            self.settings.min_per_tenant,
        );
        (shares, total)
    }

    /// Provisional shares and rates before the first adjustment, from each tenant's demand
    /// over the `elapsed` part of the interval.
    fn provisional(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let (shares, total) = self.shares_for(|t| t.inner.pending() as f64 / secs);
        for (t, share) in self
            .tenants
            .values_mut()
            .chain(std::iter::once(&mut self.overflow))
            .zip(shares)
        {
            t.inner.set_goal(Goal::PerSecond(share));
            t.inner.provisional(elapsed);
        }
        let budget = self.settings.budget_per_sec;
        self.cold.uniform = Some(if budget > 0.0 {
            Rate::new(total / budget)
        } else {
            Rate::ONE
        });
        self.cold.steps += 1;
    }

    fn tenant(settings: &FairSettings, tenant: &str) -> TenantState {
        // The inner sampler learns per key on the same schedule as the split (it is adjusted
        // right after shares are set); with no `within`, a single key stands for the tenant.
        let inner_settings = match &settings.within {
            Some(w) => EmaSettings {
                interval: settings.ema.interval,
                ..*w
            },
            None => EmaSettings {
                max_keys: 1,
                ..settings.ema
            },
        };
        TenantState {
            inner: EmaSampler::new(Goal::PerSecond(f64::INFINITY), inner_settings),
            weight: settings.weights.get(tenant).copied().unwrap_or(1.0),
            share: f64::INFINITY,
        }
    }

    /// The rate for a trace at `now`; adjusts first when an interval has ended.
    pub fn rate(&mut self, key: &Key<'_>, now: Instant) -> Rate {
        match self.started {
            None => self.started = Some(now),
            Some(s) => {
                let elapsed = now.saturating_duration_since(s);
                if elapsed >= self.settings.ema.interval {
                    self.adjust(now)
                } else if self.cold_capped() && self.cold.step_due(elapsed, self.cold_step()) {
                    self.provisional(elapsed)
                }
            }
        }
        let rate = self.count(key);
        if !self.cold_capped() {
            return rate;
        }
        let step_budget = self.settings.budget_per_sec * self.cold_step().as_secs_f64();
        self.cold.cap(rate, step_budget)
    }

    /// Counts a trace under its tenant (and within-tenant key) and returns that key's rate.
    fn count(&mut self, key: &Key<'_>) -> Rate {
        let fields = if self.settings.within.is_some() {
            key.fields
        } else {
            ""
        };
        if let Some(state) = self.tenants.get_mut(key.tenant) {
            return state.inner.count(fields);
        }
        let cold_uniform = if self.warm { None } else { self.cold.uniform };
        let state = if self.tenants.len() < self.settings.ema.max_keys {
            let mut t = Self::tenant(&self.settings, key.tenant);
            // A tenant first seen after an estimate starts at the overall provisional rate.
            t.inner.cold.uniform = cold_uniform;
            self.tenants.entry(key.tenant.into()).or_insert(t)
        } else {
            self.overflow_traces += 1;
            &mut self.overflow
        };
        state.inner.count(fields)
    }

    /// Ends the interval: measures each tenant's demand, splits the budget, and re-tunes
    /// each tenant's inner sampler to its share.
    pub fn adjust(&mut self, now: Instant) {
        for t in self.tenants.values_mut() {
            t.inner.started = self.started;
            // Keys first: the inner fold gives the tenant's demand.
            t.inner.fold_only(now);
        }
        self.overflow.inner.started = self.started;
        self.overflow.inner.fold_only(now);
        self.tenants.retain(|_, t| !t.inner.keys.is_empty());
        let (shares, _) = self.shares_for(|t| t.inner.traces_per_sec());
        for (t, share) in self
            .tenants
            .values_mut()
            .chain(std::iter::once(&mut self.overflow))
            .zip(shares)
        {
            t.share = share;
            t.inner.set_goal(Goal::PerSecond(share));
            t.inner.reallocate();
        }
        self.started = Some(now);
        self.warm = true;
        self.adjustments += 1;
    }

    /// Each tenant's demand, weight and share.
    pub fn shares(&self) -> Vec<TenantShare> {
        let mut v: Vec<TenantShare> = self
            .tenants
            .iter()
            .map(|(k, t)| (k.as_ref(), t))
            .chain((self.overflow_traces > 0).then_some((OVERFLOW_KEY, &self.overflow)))
            .map(|(k, t)| TenantShare {
                tenant: k.to_string(),
                traces_per_sec: t.inner.traces_per_sec(),
                share_per_sec: if self.warm { t.share } else { 0.0 },
                weight: t.weight,
            })
            .collect();
        v.sort_by(|a, b| b.traces_per_sec.total_cmp(&a.traces_per_sec));
        v
    }

    /// Every (tenant, key) rate, for comparisons across reloads.
    pub fn rates(&self) -> Vec<(String, Rate)> {
        let mut v: Vec<_> = self
            .tenants
            .iter()
            .flat_map(|(t, s)| {
                s.inner
                    .rates()
                    .into_iter()
                    .map(move |(k, r)| (format!("{t}{KEY_SEPARATOR}{k}"), r))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Top keys (tenant, then within-tenant key) by volume, and every tenant's share.
    pub fn snapshot(&self) -> Snapshot {
        let mut keys = Vec::new();
        let mut key_count = 0;
        for (tenant, t) in self.tenants.iter() {
            key_count += t.inner.keys.len();
            for mut k in t.inner.snapshot().keys {
                k.key = if k.key.is_empty() {
                    tenant.to_string()
                } else {
                    format!("{tenant}{KEY_SEPARATOR}{}", k.key)
                };
                keys.push(k);
            }
        }
        keys.sort_by(|a, b| b.traces_per_sec.total_cmp(&a.traces_per_sec));
        keys.truncate(SNAPSHOT_KEYS);
        Snapshot {
            keys,
            key_count,
            overflow_traces: self.overflow_traces
                + self
                    .tenants
                    .values()
                    .map(|t| t.inner.overflow_traces)
                    .sum::<u64>(),
            tenants: self.shares(),
        }
    }
}

impl EmaSampler {
    /// Folds counts into averages and forgets idle keys, without recomputing rates.
    fn fold_only(&mut self, now: Instant) {
        let goal = self.goal;
        // Reuse `adjust` with an unreachable goal, then restore: rates are recomputed by the
        // caller once the goal is known.
        self.goal = Goal::PerSecond(f64::INFINITY);
        self.adjust(now);
        self.goal = goal;
    }
}

/// Weighted max-min fair shares of `budget` for `(demand, weight)` pairs, with a floor of
/// `min(demand, floor)` each: water-filling on the level λ where a tenant gets
/// `min(demand, max(floor, weight · λ))` and the shares sum to the budget. Everyone gets
/// their whole demand when the budget covers it.
pub fn max_min_shares(tenants: &[(f64, f64)], budget: f64, floor: f64) -> Vec<f64> {
    let share = |d: f64, w: f64, level: f64| d.min(floor.max(w.max(0.0) * level));
    let total = |level: f64| {
        tenants
            .iter()
            .map(|&(d, w)| share(d, w, level))
            .sum::<f64>()
    };
    let demand: f64 = tenants.iter().map(|t| t.0).sum();
    if demand <= budget {
        return tenants.iter().map(|t| t.0).collect();
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while total(hi) < budget && hi < 1e18 {
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if total(mid) < budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // When the floors alone exceed the budget, the floors win (lo stays 0).
    tenants.iter().map(|&(d, w)| share(d, w, lo)).collect()
}

#[cfg(test)]
#[path = "cores_tests.rs"]
mod tests;
