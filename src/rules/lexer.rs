//! Splits an `if` expression into tokens with byte offsets (for diagnostics).

use super::parser::ExprError;

/// One token of an expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// A word: keyword, field prefix or path segment.
    Word(String),
    /// A quoted string, escapes resolved.
    Str(String),
    /// An integer literal.
    Int(i64),
    /// A float literal.
    Float(f64),
    /// A duration literal in nanoseconds.
    Duration(u64),
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

/// A token and where it is in the expression (byte offsets).
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

/// Tokenizes the whole expression, or reports the first lexical error.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let after_dot = matches!(out.last(), Some(Token { tok: Tok::Dot, end, .. }) if *end == i);
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => single(&mut i, Tok::LParen),
            b')' => single(&mut i, Tok::RParen),
            b'[' => single(&mut i, Tok::LBracket),
            b']' => single(&mut i, Tok::RBracket),
            b',' => single(&mut i, Tok::Comma),
            b'.' => single(&mut i, Tok::Dot),
            b'=' => {
                // `==` is accepted as a spelling of `=`.
                i += if bytes.get(i + 1) == Some(&b'=') {
                    2
                } else {
                    1
                };
                Tok::Eq
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::Ne
            }
            b'<' | b'>' => {
                let eq = bytes.get(i + 1) == Some(&b'=');
                i += if eq { 2 } else { 1 };
                match (c, eq) {
                    (b'<', false) => Tok::Lt,
                    (b'<', true) => Tok::Le,
                    (_, false) => Tok::Gt,
                    (_, true) => Tok::Ge,
                }
            }
            b'"' | b'\'' => lex_string(src, &mut i)?,
            // After a dot, a path segment may start with a digit (`span.http.2xx`).
            c if after_dot && is_word_byte(c) => lex_word(src, &mut i),
            b'0'..=b'9' => lex_number(src, &mut i)?,
            b'-' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => lex_number(src, &mut i)?,
            c if c.is_ascii_alphabetic() || c == b'_' => lex_word(src, &mut i),
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(ExprError::new(
                    i,
                    i + ch.len_utf8(),
                    format!("unexpected character `{ch}`"),
                    Some("operators are = != < <= > >= in, not in, contains, starts_with, ends_with, matches, exists, missing".into()),
                ));
            }
        };
        out.push(Token { tok, start, end: i });
    }
    out.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

fn single(i: &mut usize, tok: Tok) -> Tok {
    *i += 1;
    tok
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn lex_word(src: &str, i: &mut usize) -> Tok {
    let start = *i;
    let bytes = src.as_bytes();
    while *i < bytes.len() && is_word_byte(bytes[*i]) {
        *i += 1;
    }
    Tok::Word(src[start..*i].to_string())
}

fn lex_string(src: &str, i: &mut usize) -> Result<Tok, ExprError> {
    let start = *i;
    let mut chars = src[start..].char_indices();
    let quote = match chars.next() {
        Some((_, q)) => q,
        None => {
            return Err(ExprError::new(
                start,
                start,
                "expected a string".into(),
                None,
            ))
        }
    };
    let mut out = String::new();
    let unterminated = || {
        ExprError::new(
            start,
            src.len(),
            "unterminated string".into(),
            Some(format!("close it with {quote}")),
        )
    };
    loop {
        let (off, c) = chars.next().ok_or_else(unterminated)?;
        match c {
            c if c == quote => {
                *i = start + off + c.len_utf8();
                return Ok(Tok::Str(out));
            }
            '\\' => {
                let (eoff, e) = chars.next().ok_or_else(unterminated)?;
                let bad = |msg: &str| {
                    ExprError::new(
                        start + off,
                        start + eoff + e.len_utf8(),
                        msg.to_string(),
                        Some(r#"escapes are \" \' \\ \n \r \t \0 and \u{hex}"#.into()),
                    )
                };
                match e {
                    '"' | '\'' | '\\' => out.push(e),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '0' => out.push('\0'),
                    'u' => {
                        if chars.next().map(|(_, c)| c) != Some('{') {
                            return Err(bad("expected `{` after \\u"));
                        }
                        let mut code = String::new();
                        loop {
                            match chars.next() {
                                Some((_, '}')) => break,
                                Some((_, h)) if h.is_ascii_hexdigit() && code.len() < 6 => {
                                    code.push(h)
                                }
                                _ => return Err(bad("invalid \\u{...} escape")),
                            }
                        }
                        let ch = u32::from_str_radix(&code, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| bad("invalid unicode code point in escape"))?;
                        out.push(ch);
                    }
                    _ => return Err(bad(&format!("unknown escape `\\{e}`"))),
                }
            }
            c => out.push(c),
        }
    }
}

/// Nanoseconds per duration unit.
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

fn lex_number(src: &str, i: &mut usize) -> Result<Tok, ExprError> {
    let bytes = src.as_bytes();
    let start = *i;
    let digits = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    if bytes[*i] == b'-' {
        *i += 1;
    }
    let int_start = *i;
    digits(i);
    let int_end = *i;
    let mut frac = None;
    if bytes.get(*i) == Some(&b'.') && bytes.get(*i + 1).is_some_and(u8::is_ascii_digit) {
        *i += 1;
        let f = *i;
        digits(i);
        frac = Some(f..*i);
    }
    let mut exponent = false;
    if matches!(bytes.get(*i), Some(b'e' | b'E')) {
        let mut j = *i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            *i = j;
            digits(i);
            exponent = true;
        }
    }
    let num_end = *i;
    let unit_start = *i;
    while *i < bytes.len() && (bytes[*i].is_ascii_alphabetic() || src[*i..].starts_with('µ')) {
        *i += src[*i..].chars().next().map_or(1, char::len_utf8);
    }
    let text = &src[start..num_end];
    let err = |msg: String, hint: Option<&str>| {
        Err(ExprError::new(start, *i, msg, hint.map(str::to_string)))
    };
    if unit_start < *i {
        let unit = &src[unit_start..*i];
        let Some(per) = unit_nanos(unit) else {
            return err(
                format!("unknown duration unit `{unit}` in `{}`", &src[start..*i]),
                Some("units are ns, us, ms, s, m, h, e.g. 250ms or 1.5s"),
            );
        };
        if bytes[start] == b'-' || exponent {
            return err(
                format!("invalid duration `{}`", &src[start..*i]),
                Some("a duration is a non-negative number with a unit, e.g. 250ms or 1.5s"),
            );
        }
        // Exact decimal arithmetic: `1.5s` is 1_500_000_000ns, never a rounded float.
        let whole: u128 = src[int_start..int_end].parse().unwrap_or(u128::MAX);
        let mut nanos = whole.saturating_mul(u128::from(per));
        if let Some(frac) = frac {
            let f = &src[frac];
            let scale = 10u128.checked_pow(f.len() as u32);
            let num = f.parse::<u128>().ok().map(|v| v * u128::from(per));
            match (num, scale) {
                (Some(num), Some(scale)) if num % scale == 0 => nanos += num / scale,
                _ => {
                    return err(
                        format!(
                            "duration `{}` is not a whole number of nanoseconds",
                            &src[start..*i]
                        ),
                        Some("use a smaller unit, e.g. 1500us instead of 1.5ms"),
                    )
                }
            }
        }
        return match u64::try_from(nanos) {
            Ok(n) => Ok(Tok::Duration(n)),
            Err(_) => err(format!("duration `{}` is too large", &src[start..*i]), None),
        };
    }
    if frac.is_some() || exponent {
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Tok::Float(x)),
            _ => err(format!("number `{text}` is out of range"), None),
        }
    } else {
        match text.parse::<i64>() {
            Ok(n) => Ok(Tok::Int(n)),
            Err(_) => err(
                format!("integer `{text}` is out of range"),
                Some("integers are 64-bit signed"),
            ),
        }
    }
}
