//! Durations as the Gateway API writes them (GEP-2257): one to four
//! `<number><unit>` pairs, units `h`, `m`, `s`, `ms`, e.g. `250ms`, `1h30m`.

use std::borrow::Cow;

/// The schema pattern, as in the Gateway API CRDs.
pub const PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {0:?}: write one to four number+unit pairs with units h, m, s or ms, e.g. 250ms or 1m30s"
)]
pub struct DurationError(pub String);

/// A GEP-2257 duration, kept as written. Checked when deserialized, so a
/// bad value is refused with the field and line where it was read (the
/// API server checks the same pattern from the CRD schema).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(pub String);

impl TryFrom<String> for Duration {
    type Error = DurationError;

    fn try_from(s: String) -> Result<Self, DurationError> {
        parse(&s)?;
        Ok(Self(s))
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl Duration {
    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        parse(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "description": "A duration such as 250ms, 10s or 1h30m (GEP-2257).",
        })
    }
}

/// Parses a GEP-2257 duration.
/// `parse` for command-line flags (clap's `value_parser`).
pub fn parse_arg(s: &str) -> Result<std::time::Duration, String> {
    parse(s).map_err(|e| e.to_string())
}

pub fn parse(s: &str) -> Result<std::time::Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let mut rest = s.as_bytes();
    let mut total = std::time::Duration::ZERO;
    let mut pairs = 0;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 5 {
            return Err(err());
        }
        let n: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(err)?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with(b"ms") {
            (std::time::Duration::from_millis(n), 2)
        } else {
            match rest.first() {
                Some(b'h') => (std::time::Duration::from_secs(n * 3600), 1),
                Some(b'm') => (std::time::Duration::from_secs(n * 60), 1),
                Some(b's') => (std::time::Duration::from_secs(n), 1),
                _ => return Err(err()),
            }
        };
        rest = &rest[len..];
        total += unit;
        pairs += 1;
    }
    if pairs == 0 || pairs > 4 {
        return Err(err());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn parses_what_the_gateway_api_allows() {
        for (s, d) in [
            ("0s", D::ZERO),
            ("250ms", D::from_millis(250)),
            ("1h30m", D::from_secs(5400)),
            ("1m1s500ms", D::from_millis(61_500)),
            ("99999s", D::from_secs(99_999)),
            ("1h1m1s1ms", D::from_millis(3_661_001)),
        ] {
            assert_eq!(parse(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn refuses_the_rest_with_a_hint() {
        for s in [
            "",
            "1",
            "1.5s",
            "-1s",
            "1d",
            "100000s",
            "1h1m1s1ms1h",
            "s",
            "1 s",
            "1S",
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.to_string().contains("e.g. 250ms"), "{s}: {e}");
        }
    }

    #[test]
    fn agrees_with_the_schema_pattern() {
        let re = regex::Regex::new(PATTERN).unwrap();
        for s in [
            "250ms",
            "1h30m",
            "0s",
            "",
            "1.5s",
            "1d",
            "1h1m1s1ms1h",
            "100000s",
            "1 s",
        ] {
            assert_eq!(re.is_match(s), parse(s).is_ok(), "{s}");
        }
    }
}
