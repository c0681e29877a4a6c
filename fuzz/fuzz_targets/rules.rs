//! Arbitrary text as a rules file: parsing and validation never panic, and a rule set that
//! loads can be evaluated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = tailsift::rules::RuleSet::parse(text, "fuzz.toml") {
        support::exercise_rules(&rules);
    }
    let _ = tailsift::rules::parse_expr(text);
});

mod support {
    include!("support.rs");
}
