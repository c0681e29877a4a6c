//! Statistical specifications of the sampler cores, over seeded simulated traffic and
//! simulated time. Keep/drop is the real consistent scheme (`crate::consistent`), so these
//! measure exactly what the proxy does with the rates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::consistent::{compose, keeps, rate_for_threshold, threshold_for_rate, MAX};

/// SplitMix64: small, seeded, good enough for simulated traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        id
    }
}

fn randomness(id: &[u8; 16]) -> u64 {
    let mut lo = [0u8; 8];
    lo.copy_from_slice(&id[8..]);
    u64::from_be_bytes(lo) & (MAX - 1)
}

/// Zipf-distributed key indices: P(k) ∝ 1 / (k+1)^s.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in cdf.iter_mut() {
            *c /= acc;
        }
        Zipf(cdf)
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn ema(interval_secs: u64, max_keys: usize) -> EmaSettings {
    EmaSettings {
        interval: Duration::from_secs(interval_secs),
        weight: 0.5,
        max_keys,
    }
}

/// One simulated decision, as `decide` makes it: integer rate, composed threshold, keep test.
struct Decided {
    keep: bool,
    rate: u64,
    sample_rate: u64,
}

fn decide(rate: Rate, id: &[u8; 16], upstream: u64) -> Decided {
    let r = rate.pick(dither(id));
    let threshold = compose(upstream, r);
    Decided {
        keep: keeps(randomness(id), threshold),
        rate: r,
        sample_rate: rate_for_threshold(threshold),
    }
}

#[test]
fn pick_keeps_one_in_a_fractional_rate_on_average() {
    let mut rng = Rng(7);
    for target in [1.0, 1.3, 2.5, 7.9, 20.0] {
        let n = 200_000;
        let inv: f64 = (0..n)
            .map(|_| 1.0 / Rate::new(target).pick(rng.next()) as f64)
            .sum();
        let err = (inv / n as f64) * target - 1.0;
        assert!(
            err.abs() < 0.01,
            "target {target}: mean 1/rate off by {err}"
        );
    }
    assert_eq!(Rate::new(0.2), Rate::ONE);
    assert_eq!(Rate::new(f64::NAN), Rate::ONE);
}

#[test]
fn ema_dynamic_keeps_one_in_goal_and_every_steady_key_each_interval() {
    const GOAL: f64 = 20.0;
    const TRACES: usize = 1_000_000;
    const PER_SEC: u64 = 1_000;
    const INTERVAL: u64 = 15;
    let keys = names("route-", 200);
    let zipf = Zipf::new(keys.len(), 1.1);
    let mut s = EmaSampler::new(Goal::SampleRate(GOAL), ema(INTERVAL, 10_000));
    let mut rng = Rng(1);
    let t0 = Instant::now();
    let intervals = TRACES / (PER_SEC * INTERVAL) as usize + 1;
    // Per key and interval: traces, kept, expected kept (Σ 1/rate).
    let mut seen = vec![vec![0u32; intervals]; keys.len()];
    let mut kept_in = vec![vec![0u32; intervals]; keys.len()];
    let mut expected = vec![vec![0f64; intervals]; keys.len()];
    let mut kept = 0usize;
    for i in 0..TRACES {
        let now = t0 + Duration::from_micros(i as u64 * 1_000_000 / PER_SEC);
        let j = i / (PER_SEC * INTERVAL) as usize;
        let k = zipf.sample(&mut rng);
        let id = rng.trace_id();
        let rate = s.rate(
            &Key {
                tenant: "t",
                fields: &keys[k],
            },
            now,
        );
        let d = decide(rate, &id, 0);
        seen[k][j] += 1;
        expected[k][j] += 1.0 / d.rate as f64;
        if d.keep {
            kept += 1;
            kept_in[k][j] += 1;
        }
    }
    let fraction = kept as f64 / TRACES as f64;
    let err = fraction * GOAL - 1.0;
    println!(
        "ema_dynamic: kept {kept} of {TRACES} = 1 in {:.2} (error {:+.2}%)",
        1.0 / fraction,
        err * 100.0
    );
    assert!(err.abs() <= 0.10, "kept fraction {fraction} vs 1/{GOAL}");

    // Keys with at least one trace in every full interval after the first (warm-up).
    let full = intervals - 1;
    let mut steady = 0;
    let mut lowest_mean_expected = f64::INFINITY;
    let (mut pairs, mut pairs_with_kept) = (0, 0);
    for k in 0..keys.len() {
        if (1..full).any(|j| seen[k][j] == 0) {
            continue;
        }
        steady += 1;
        let mean = (1..full).map(|j| expected[k][j]).sum::<f64>() / (full - 1) as f64;
        lowest_mean_expected = lowest_mean_expected.min(mean);
        pairs += full - 1;
        pairs_with_kept += kept_in[k][1..full].iter().filter(|&&n| n > 0).count();
        // A key never gets a rate above its learned traces per interval (so it keeps ≥ 1
        // per interval on average at its learned volume).
        let mean_seen = (1..full).map(|j| seen[k][j] as f64).sum::<f64>() / (full - 1) as f64;
        let r = s.current_rate(&keys[k]).map_or(1.0, Rate::get);
        assert!(
            r <= mean_seen.max(1.0) * 1.5,
            "key {k}: rate {r} for {mean_seen} per interval"
        );
    }
    println!(
        "ema_dynamic: {steady} steady keys; lowest mean expected kept per interval {lowest_mean_expected:.2}; \
         {pairs_with_kept} of {pairs} key-intervals kept ≥ 1 ({:.1}%)",
        100.0 * pairs_with_kept as f64 / pairs as f64
    );
    assert!(steady >= 50, "the traffic has steady keys ({steady})");
    assert!(
        lowest_mean_expected >= 1.0,
        "every steady key keeps ≥ 1 per interval on average (lowest {lowest_mean_expected})"
    );
}

/// Σ SampleRate over kept traces against the true count, per key with ≥ 10,000 traces.
fn reweighting_errors(upstream_rate: u64, seed: u64) -> Vec<(usize, u64, f64)> {
    const TRACES: usize = 2_000_000;
    const PER_SEC: u64 = 2_000;
    let keys = names("svc-", 12);
    let zipf = Zipf::new(keys.len(), 1.0);
    let upstream = if upstream_rate > 1 {
        threshold_for_rate(upstream_rate)
    } else {
        0
    };
    let mut s = EmaSampler::new(Goal::SampleRate(4.0), ema(10, 10_000));
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut truth = vec![0u64; keys.len()];
    let mut estimate = vec![0u64; keys.len()];
    for i in 0..TRACES {
        let now = t0 + Duration::from_micros(i as u64 * 1_000_000 / PER_SEC);
        let k = zipf.sample(&mut rng);
        let id = rng.trace_id();
        truth[k] += 1;
        // Upstream head sampling: only traces with R ≥ Tu arrive, carrying th = Tu.
        if !keeps(randomness(&id), upstream) {
            continue;
        }
        let rate = s.rate(
            &Key {
                tenant: "t",
                fields: &keys[k],
            },
            now,
        );
        let d = decide(rate, &id, upstream);
        if d.keep {
            estimate[k] += d.sample_rate;
        }
    }
    (0..keys.len())
        .filter(|&k| truth[k] >= 10_000)
        .map(|k| (k, truth[k], estimate[k] as f64 / truth[k] as f64 - 1.0))
        .collect()
}

#[test]
fn sample_rates_of_kept_traces_add_up_to_the_true_count() {
    for upstream in [1, 4] {
        let errors = reweighting_errors(upstream, 3 + upstream);
        let worst = errors.iter().map(|e| e.2.abs()).fold(0.0, f64::max);
        println!(
            "reweighting, upstream 1/{upstream}: {} keys, worst error {:.2}%; {:?}",
            errors.len(),
            worst * 100.0,
            errors
                .iter()
                .map(|(k, n, e)| format!("{k}:{n}:{:+.2}%", e * 100.0))
                .collect::<Vec<_>>()
        );
        assert!(errors.len() >= 10);
        for (k, n, e) in errors {
            assert!(
                e.abs() <= 0.03,
                "upstream 1/{upstream}, key {k} ({n} traces): {e}"
            );
        }
    }
}

#[test]
fn ema_throughput_keeps_the_goal_per_second_at_steady_state() {
    const GOAL: f64 = 100.0;
    const PER_SEC: u64 = 2_000;
    const INTERVAL: u64 = 10;
    const SECS: u64 = 300;
    let keys = names("k", 100);
    let zipf = Zipf::new(keys.len(), 1.2);
    let mut s = EmaSampler::new(Goal::PerSecond(GOAL), ema(INTERVAL, 10_000));
    let mut rng = Rng(11);
    let t0 = Instant::now();
    let mut kept_after_warmup = 0u64;
    let warmup = 3 * INTERVAL * PER_SEC;
    for i in 0..SECS * PER_SEC {
        let now = t0 + Duration::from_micros(i * 1_000_000 / PER_SEC);
        let k = zipf.sample(&mut rng);
        let id = rng.trace_id();
        let rate = s.rate(
            &Key {
                tenant: "t",
                fields: &keys[k],
            },
            now,
        );
        if decide(rate, &id, 0).keep && i >= warmup {
            kept_after_warmup += 1;
        }
    }
    let per_sec = kept_after_warmup as f64 / (SECS - 3 * INTERVAL) as f64;
    println!("ema_throughput: {per_sec:.1} kept/s for a goal of {GOAL}");
    assert!((per_sec / GOAL - 1.0).abs() <= 0.10, "{per_sec} kept/s");
}

#[test]
fn max_min_shares_fill_small_demands_then_split_by_weight() {
    // Budget 100 with floor 2: the small tenant keeps its 0.3, acme (weight 4) and the two
    // others their 20, the flood what is left.
    let shares = max_min_shares(
        &[
            (2000.0, 1.0),
            (20.0, 4.0),
            (20.0, 1.0),
            (20.0, 1.0),
            (0.3, 1.0),
        ],
        100.0,
        2.0,
    );
    let sum: f64 = shares.iter().sum();
    assert!((sum - 100.0).abs() < 1e-6, "{shares:?}");
    assert!((shares[1] - 20.0).abs() < 1e-9 && (shares[4] - 0.3).abs() < 1e-9);
    assert!((shares[2] - 20.0).abs() < 1e-6 && (shares[0] - 39.7).abs() < 1e-6);
    // Demand under budget: everyone keeps everything.
    assert_eq!(
        max_min_shares(&[(3.0, 1.0), (4.0, 9.0)], 10.0, 1.0),
        vec![3.0, 4.0]
    );
    // Floors win over weights: a weight-0.01 tenant still gets its floor.
    let s = max_min_shares(&[(1000.0, 100.0), (50.0, 0.01)], 100.0, 5.0);
    assert!(
        (s[1] - 5.0).abs() < 1e-6 && (s[0] - 95.0).abs() < 1e-6,
        "{s:?}"
    );
}

#[test]
fn tenant_fair_protects_small_tenants_from_a_flood() {
    const BUDGET: f64 = 100.0;
    const MIN: f64 = 2.0;
    const INTERVAL: u64 = 10;
    const SECS: u64 = 150;
    // Traces per second per tenant: one sends 100× each other one.
    let tenants: Vec<(&str, f64)> = vec![
        ("flood", 2000.0),
        ("acme", 20.0),
        ("b", 20.0),
        ("c", 20.0),
        ("d", 20.0),
        ("e", 20.0),
        ("tiny", 0.5),
    ];
    let total: f64 = tenants.iter().map(|t| t.1).sum();
    let routes = names("/r", 8);
    let zipf = Zipf::new(routes.len(), 1.0);
    let mut s = TenantFair::new(FairSettings {
        budget_per_sec: BUDGET,
        min_per_tenant: MIN,
        weights: HashMap::from([("acme".to_string(), 4.0)]),
        ema: ema(INTERVAL, 1000),
        within: Some(ema(INTERVAL, 1000)),
    });
    let mut rng = Rng(5);
    let t0 = Instant::now();
    let warmup = 3 * INTERVAL;
    let mut kept: HashMap<&str, u64> = HashMap::new();
    let mut sent: HashMap<&str, u64> = HashMap::new();
    let n = (SECS as f64 * total) as u64;
    for i in 0..n {
        let now = t0 + Duration::from_secs_f64(i as f64 / total);
        // Pick a tenant in proportion to its traffic.
        let mut u = rng.unit() * total;
        let mut tenant = tenants[0].0;
        for &(t, r) in &tenants {
            if u < r {
                tenant = t;
                break;
            }
            u -= r;
        }
        let route = &routes[zipf.sample(&mut rng)];
        let id = rng.trace_id();
        let rate = s.rate(
            &Key {
                tenant,
                fields: route,
            },
            now,
        );
        if now.duration_since(t0).as_secs() >= warmup {
            *sent.entry(tenant).or_default() += 1;
            if decide(rate, &id, 0).keep {
                *kept.entry(tenant).or_default() += 1;
            }
        }
    }
    let secs = (SECS - warmup) as f64;
    let rate_of = |t: &str| kept.get(t).copied().unwrap_or(0) as f64 / secs;
    let all: f64 = tenants.iter().map(|t| rate_of(t.0)).sum();
    let expected = max_min_shares(
        &tenants
            .iter()
            .map(|&(t, r)| (r, if t == "acme" { 4.0 } else { 1.0 }))
            .collect::<Vec<_>>(),
        BUDGET,
        MIN,
    );
    println!(
        "tenant_fair: {all:.1} kept/s for a budget of {BUDGET}; per tenant (kept/s vs share): {:?}",
        tenants
            .iter()
            .zip(&expected)
            .map(|(t, e)| format!("{}: {:.2} vs {:.2}", t.0, rate_of(t.0), e))
            .collect::<Vec<_>>()
    );
    assert!((all / BUDGET - 1.0).abs() <= 0.10, "{all} kept/s");
    for ((t, r), share) in tenants.iter().zip(&expected).skip(1) {
        let got = rate_of(t);
        assert!(
            got >= 0.9 * MIN.min(*r),
            "{t} keeps {got}/s, under the floor"
        );
        assert!(
            got >= 0.9 * share,
            "{t} keeps {got}/s, under its share {share}"
        );
    }
    // The flood keeps no more than its fair share either.
    assert!(rate_of("flood") <= 1.1 * expected[0]);
}

#[test]
fn two_instances_fed_the_same_traffic_decide_alike() {
    let keys = names("k", 50);
    let zipf = Zipf::new(keys.len(), 1.1);
    let train = |seed: u64| {
        let mut s = EmaSampler::new(Goal::SampleRate(20.0), ema(15, 10_000));
        let mut rng = Rng(seed);
        let t0 = Instant::now();
        for i in 0..300_000u64 {
            let k = zipf.sample(&mut rng);
            let key = Key {
                tenant: "t",
                fields: &keys[k],
            };
            s.rate(&key, t0 + Duration::from_millis(i));
        }
        s
    };
    // Same distribution, independently drawn traffic (as two nodes or shards see it).
    let (a, b) = (train(100), train(200));
    let mut rng = Rng(300);
    let n = 200_000;
    let mut same = 0;
    for _ in 0..n {
        let k = &keys[zipf.sample(&mut rng)];
        let id = rng.trace_id();
        let ra = a.current_rate(k).unwrap_or(Rate::ONE);
        let rb = b.current_rate(k).unwrap_or(Rate::ONE);
        same += usize::from(decide(ra, &id, 0).keep == decide(rb, &id, 0).keep);
    }
    let agreement = same as f64 / n as f64;
    println!("two instances agree on {:.3}% of traces", agreement * 100.0);
    assert!(agreement >= 0.99, "{agreement}");
}

#[test]
fn keys_beyond_max_keys_share_one_counted_bucket() {
    let mut s = EmaSampler::new(Goal::SampleRate(10.0), ema(1, 10));
    let t0 = Instant::now();
    let keys = names("k", 50);
    for i in 0..5_000u64 {
        let key = Key {
            tenant: "t",
            fields: &keys[(i % 50) as usize],
        };
        s.rate(&key, t0 + Duration::from_millis(i));
    }
    let snap = s.snapshot();
    assert_eq!(snap.key_count, 10);
    assert_eq!(snap.overflow_traces, 4_000);
    assert!(snap
        .keys
        .iter()
        .any(|k| k.key == OVERFLOW_KEY && k.rate > 1.0));
}

#[test]
fn idle_keys_age_out_and_rare_keys_keep_everything() {
    let mut s = EmaSampler::new(Goal::SampleRate(10.0), ema(1, 100));
    let t0 = Instant::now();
    let key = |f| Key {
        tenant: "t",
        fields: f,
    };
    for i in 0..10_000u64 {
        s.rate(&key("busy"), t0 + Duration::from_micros(i * 500));
        if i % 2_000 == 0 {
            s.rate(&key("rare"), t0 + Duration::from_micros(i * 500));
        }
    }
    assert!(s.current_rate("busy").unwrap().get() > 5.0);
    assert_eq!(s.current_rate("rare"), Some(Rate::ONE));
    // A minute of silence: both averages decay below the age-out value and are forgotten.
    s.adjust(t0 + Duration::from_secs(60));
    s.adjust(t0 + Duration::from_secs(61));
    assert_eq!(s.current_rate("rare"), None);
}

/// A 600 traces/s flood of `tenants` tenants (and a few keys) from a cold start, through
/// `rate`; returns the kept traces in each of the first 12 seconds and the sum of the kept
/// traces' `SampleRate`s.
fn cold_flood(mut rate: impl FnMut(&Key<'_>, Instant) -> Rate, tenants: usize) -> (Vec<u64>, f64) {
    let t0 = Instant::now();
    let mut rng = Rng(0xC01D);
    let tenant_names = names("tenant-", tenants);
    let keys = names("/route/", 5);
    let mut per_second = vec![0u64; 12];
    let mut weighted = 0.0;
    for i in 0..600 * 12u64 {
        let now = t0 + Duration::from_micros(i * 1_000_000 / 600);
        let id = rng.trace_id();
        let tenant = &tenant_names[(rng.next() % tenants as u64) as usize];
        let fields = &keys[(rng.next() % 5) as usize];
        let d = decide(rate(&Key { tenant, fields }, now), &id, 0);
        if d.keep {
            per_second[(i / 600) as usize] += 1;
            weighted += d.sample_rate as f64;
        }
    }
    (per_second, weighted)
}

fn assert_within_budget_from_the_first_second(per_second: &[u64], weighted: f64, budget: f64) {
    eprintln!("kept per second {per_second:?}, SampleRates sum {weighted}");
    // Poisson noise around 30/s is ±5.5 (1 sd); 1.5× the budget is ~3 sd above it.
    for (s, kept) in per_second.iter().enumerate() {
        assert!(
            (*kept as f64) <= budget * 1.5,
            "second {s} kept {kept} > 1.5 × {budget}: {per_second:?}"
        );
    }
    let total: u64 = per_second.iter().sum();
    assert!(
        (total as f64) <= budget * 12.0 * 1.15,
        "12 s kept {total} for a budget of {}: {per_second:?}",
        budget * 12.0
    );
    // The kept traces still stand for everything that was sent (7,200 traces).
    assert!(
        (weighted - 7_200.0).abs() < 7_200.0 * 0.25,
        "SampleRates add up to {weighted}, 7,200 were sent"
    );
}

#[test]
fn a_cold_ema_throughput_sampler_keeps_its_budget_from_the_first_second_of_a_flood() {
    let mut s = EmaSampler::new(Goal::PerSecond(30.0), ema(15, 100));
    let (per_second, weighted) = cold_flood(|k, now| s.rate(k, now), 1);
    assert_within_budget_from_the_first_second(&per_second, weighted, 30.0);
}

#[test]
fn a_cold_tenant_fair_sampler_keeps_its_budget_from_the_first_second_of_a_flood() {
    let mut s = TenantFair::new(FairSettings {
        budget_per_sec: 30.0,
        min_per_tenant: 1.0,
        weights: HashMap::new(),
        ema: ema(15, 100),
        within: Some(ema(15, 100)),
    });
    let (per_second, weighted) = cold_flood(|k, now| s.rate(k, now), 4);
    assert_within_budget_from_the_first_second(&per_second, weighted, 30.0);
}
