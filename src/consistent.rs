//! OpenTelemetry consistent probability sampling (tracestate `ot=th:…;rv:…`).
//!
//! A trace is kept when its 56-bit randomness R is at least the rejection threshold T; keeping
//! 1 in N means T = 2^56 − 2^56/N. R is the `rv` sub-key of the `ot` tracestate member when
//! present, else the low 56 bits of the trace id. Because R comes from the trace, every node
//! and every restart decides a trace alike, and thresholds compose with upstream head sampling:
//! a span that arrives with threshold Tu has already passed R ≥ Tu, so applying 1 in N to what
//! arrives gives T = 2^56 − (2^56 − Tu)/N ("proportional" composition).

/// 2^56: the size of the randomness space.
pub const MAX: u64 = 1 << 56;

/// The threshold that keeps 1 in `rate` traces (rate 0 is treated as 1).
pub fn threshold_for_rate(rate: u64) -> u64 {
    compose(0, rate)
}

/// The threshold that keeps 1 in `rate` of what passed an upstream threshold `upstream`.
pub fn compose(upstream: u64, rate: u64) -> u64 {
    let upstream = upstream.min(MAX - 1);
    MAX - (MAX - upstream) / rate.max(1)
}

/// The sample rate (traces represented per kept trace) of a threshold, rounded to an integer.
pub fn rate_for_threshold(threshold: u64) -> u64 {
    let kept = MAX - threshold.min(MAX - 1);
    ((MAX as f64 / kept as f64).round() as u64).max(1)
}

/// The keep test: randomness at or above the threshold.
pub fn keeps(randomness: u64, threshold: u64) -> bool {
    randomness >= threshold
}

/// The `th` value as OTel writes it: up to 14 hex digits, trailing zeros removed, "0" for 0.
pub fn encode_threshold(threshold: u64) -> ThresholdHex {
    let mut digits = [0u8; 14];
    let t = threshold.min(MAX - 1);
    for (i, d) in digits.iter_mut().enumerate() {
        let nibble = (t >> (4 * (13 - i))) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    let mut len = 14;
    while len > 1 && digits[len - 1] == b'0' {
        len -= 1;
    }
    ThresholdHex { digits, len }
}

/// A threshold rendered as hex without allocating.
#[derive(Clone, Copy, Debug)]
pub struct ThresholdHex {
    digits: [u8; 14],
    len: usize,
}

impl ThresholdHex {
    /// The hex digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[..self.len]
    }
}

/// Parses a `th` or `rv` value: 1 to 14 hex digits, right-padded with zeros.
fn parse_hex56(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 14 {
        return None;
    }
    let v = u64::from_str_radix(value, 16).ok()?;
    Some(v << (4 * (14 - value.len())))
}

/// What the `ot` member of a W3C tracestate says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtState {
    /// Upstream rejection threshold.
    pub threshold: Option<u64>,
    /// Explicit randomness.
    pub randomness: Option<u64>,
}

/// Reads `th` and `rv` from a tracestate header value; malformed parts are ignored.
pub fn parse_tracestate(tracestate: &str) -> OtState {
    let mut state = OtState::default();
    for member in tracestate.split(',') {
        let Some(ot) = member.trim().strip_prefix("ot=") else {
            continue;
        };
        for sub in ot.split(';') {
            if let Some(th) = sub.strip_prefix("th:") {
                state.threshold = parse_hex56(th);
            } else if let Some(rv) = sub.strip_prefix("rv:") {
                // rv is exactly 14 hex digits per the spec.
                if rv.len() == 14 {
                    state.randomness = parse_hex56(rv);
                }
            }
        }
    }
    state
}

/// Writes `tracestate` with the `ot` member's `th` set to `threshold`: the `ot` member goes
/// first (W3C: a modified member moves to the front), its other sub-keys and every other
/// member are kept in order.
pub fn write_tracestate(tracestate: &str, threshold: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"ot=th:");
    out.extend_from_slice(encode_threshold(threshold).as_bytes());
    let mut others = Vec::new();
    for member in tracestate.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        if let Some(ot) = member.strip_prefix("ot=") {
            for sub in ot.split(';') {
                if !sub.is_empty() && !sub.starts_with("th:") {
                    out.push(b';');
                    out.extend_from_slice(sub.as_bytes());
                }
            }
        } else {
            others.push(member);
        }
    }
    for member in others {
        out.push(b',');
        out.extend_from_slice(member.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_one_keeps_everything_with_threshold_zero() {
        assert_eq!(threshold_for_rate(1), 0);
        assert_eq!(encode_threshold(0).as_bytes(), b"0");
        assert!(keeps(0, 0));
    }

    #[test]
    fn one_in_ten_threshold_matches_the_spec_example() {
        // The spec's 10% example: th:e666666666666a (rounded); ours floors, within 1 ulp.
        let t = threshold_for_rate(10);
        let hex = std::str::from_utf8(encode_threshold(t).as_bytes())
            .unwrap()
            .to_string();
        assert!(hex.starts_with("e66666666666"), "{hex}");
        assert_eq!(rate_for_threshold(t), 10);
        assert_eq!(threshold_for_rate(2), 0x80000000000000);
        assert_eq!(encode_threshold(threshold_for_rate(2)).as_bytes(), b"8");
    }

    #[test]
    fn composition_with_upstream_multiplies_rates() {
        let upstream = threshold_for_rate(4);
        let t = compose(upstream, 10);
        assert_eq!(rate_for_threshold(t), 40);
    }

    #[test]
    fn tracestate_parsing_reads_th_and_rv() {
        let s = parse_tracestate("vendor=x, ot=th:c;rv:0123456789abcd");
        assert_eq!(s.threshold, Some(0xc0000000000000));
        assert_eq!(s.randomness, Some(0x0123456789abcd));
        assert_eq!(parse_tracestate("ot=th:zz").threshold, None);
    }

    #[test]
    fn tracestate_rewrite_keeps_other_members_and_subkeys() {
        let mut out = Vec::new();
        write_tracestate(
            "a=1,ot=th:c;rv:0123456789abcd,b=2",
            0x80000000000000,
            &mut out,
        );
        assert_eq!(out, b"ot=th:8;rv:0123456789abcd,a=1,b=2");
    }
}
