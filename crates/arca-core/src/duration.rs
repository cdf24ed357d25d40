//! Durations as configuration writes them: a number and a unit
//! (`"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`).

use std::fmt;
use std::time::Duration;

/// A duration that reads and writes the `"10s"` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `"<digits><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (num, unit) = raw.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("expected a duration such as \"500ms\", \"10s\" or \"5m\", got {raw:?}")
        })?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => {
                return Err(format!(
                    "expected a duration with a unit (ms, s, m, h, d) such as \"10s\", got {raw:?}"
                ));
            }
        };
        Ok(Self(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if !ms.is_multiple_of(60_000) || ms == 0 {
            write!(f, "{}s", ms / 1000)
        } else if !ms.is_multiple_of(3_600_000) {
            write!(f, "{}m", ms / 60_000)
        } else if !ms.is_multiple_of(86_400_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else {
            write!(f, "{}d", ms / 86_400_000)
        }
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_print_back() {
        for (s, ms) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("90m", 5_400_000),
            ("2d", 172_800_000),
            ("0s", 0),
        ] {
            let d = HumanDuration::parse(s).expect(s);
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(d.to_string(), s, "the shortest form");
            assert_eq!(HumanDuration::parse(&d.to_string()), Ok(d));
        }
    }

    #[test]
    fn missing_or_unknown_units_are_refused() {
        for bad in ["10", "s", "10x", "-1s", "1.5s", ""] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
    }
}
