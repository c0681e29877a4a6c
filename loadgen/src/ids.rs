//! Trace and span ids that carry the generator's global trace number, so the sink can count
//! spans per trace in a flat array and the checker can recompute every trace from the seed.
//!
//! A trace id is 16 bytes: the high 8 are an invertible scramble of the global trace number
//! `g` (the sink inverts it), the low 8 are `splitmix64(g, seed)`. The low 56 bits are the
//! OpenTelemetry consistent-sampling randomness, so they must be uniform: they are, and they
//! depend on the seed, so another seed gives other sampling decisions for the same shapes.

/// Odd multiplier of the scramble (golden ratio); invertible modulo 2^64.
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
const MUL_INV: u64 = inverse(MUL);
const HI_KEY: u64 = 0x7A11_5EED_0B5E_55ED;
const LO_KEY: u64 = 0xC0FF_EE00_D15E_A5E5;
const SPAN_KEY: u64 = 0x5CA1_AB1E_F00D_BA11;

/// Global trace numbers at or above this are not ours (a random id inverts to one with
/// probability 2^-24).
pub const MAX_TRACE_NUMBER: u64 = 1 << 40;

const fn inverse(x: u64) -> u64 {
    // Newton's iteration: each step doubles the number of correct low bits (3 to start).
    let mut inv = x;
    let mut i = 0;
    while i < 5 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(x.wrapping_mul(inv)));
        i += 1;
    }
    inv
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The trace id of global trace number `g` under `seed`.
pub fn trace_id(seed: u64, g: u64) -> [u8; 16] {
    let hi = (g ^ HI_KEY).wrapping_mul(MUL);
    let lo = splitmix64(g ^ LO_KEY ^ splitmix64(seed));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// The global trace number encoded in a trace id, if it is one of ours.
pub fn trace_number(trace_id: &[u8]) -> Option<u64> {
    let hi: [u8; 8] = trace_id.get(..8)?.try_into().ok()?;
    if trace_id.len() != 16 {
        return None;
    }
    let g = u64::from_be_bytes(hi).wrapping_mul(MUL_INV) ^ HI_KEY;
    (g < MAX_TRACE_NUMBER).then_some(g)
}

/// The id of span `j` (< 64) of global trace `g`: distinct for distinct (g, j), never zero.
pub fn span_id(seed: u64, g: u64, j: u32) -> [u8; 8] {
    let v = splitmix64(((g << 6) | u64::from(j)) ^ SPAN_KEY ^ seed.rotate_left(17));
    let v = if v == 0 { 1 } else { v };
    v.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_number_round_trips() {
        assert_eq!(MUL.wrapping_mul(MUL_INV), 1);
        for g in [0, 1, 2, 12345, MAX_TRACE_NUMBER - 1] {
            assert_eq!(trace_number(&trace_id(7, g)), Some(g));
        }
        assert_eq!(trace_number(&[0xAB; 16]), None);
    }
}
