//! Hostile input without a fuzzer: the fuzz targets' checks (`fuzz/fuzz_targets/support.rs`)
//! run over thousands of seeded mutations of the seed corpora on every `cargo test`, so a
//! decoder or parser panic is caught in CI even where `cargo fuzz` is not installed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod support {
    include!("../fuzz/fuzz_targets/support.rs");
}

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = format!("{ROOT}/fuzz/corpus/{target}");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{dir} is empty");
    files
}

/// One random edit: flip, overwrite, insert, delete, truncate or duplicate a slice.
fn mutate(rng: &mut SmallRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..4) {
        if out.is_empty() {
            out.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..out.len());
        match rng.random_range(0..6) {
            0 => out[i] ^= 1 << rng.random_range(0..8),
            1 => out[i] = rng.random(),
            2 => out.insert(i, rng.random()),
            3 => {
                out.remove(i);
            }
            4 => out.truncate(i),
            _ => {
                let end = (i + rng.random_range(1..16)).min(out.len());
                let chunk = out[i..end].to_vec();
                out.splice(i..i, chunk);
            }
        }
    }
    out
}

#[test]
fn mutated_protobuf_requests_never_panic_and_reencode_cleanly() {
    let mut rng = SmallRng::seed_from_u64(1);
    for seed in corpus("ingest") {
        support::exercise_request(bytes::Bytes::from(seed.clone()));
        for _ in 0..20_000 {
            support::exercise_request(bytes::Bytes::from(mutate(&mut rng, &seed)));
        }
    }
}

#[test]
fn mutated_otlp_json_requests_never_panic() {
    let mut rng = SmallRng::seed_from_u64(2);
    for seed in corpus("otlp_json") {
        for _ in 0..5_000 {
            if let Ok(pb) = tailsift::otlp::json::json_to_protobuf(&mutate(&mut rng, &seed)) {
                support::exercise_request(pb);
            }
        }
    }
}

#[test]
fn mutated_rules_files_never_panic() {
    let mut rng = SmallRng::seed_from_u64(3);
    for seed in corpus("rules") {
        for _ in 0..3_000 {
            let bytes = mutate(&mut rng, &seed);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Ok(rules) = tailsift::rules::RuleSet::parse(text, "mutated.toml") {
                    support::exercise_rules(&rules);
                }
            }
        }
    }
}
