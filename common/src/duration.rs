//! Human durations as the CLI, the tags and the config write them: `90s`, `30m`, `2h`,
//! `1d`, `1h30m`, or a bare number of seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A length of time with whole-second precision, parsed from and rendered as
/// `1d2h3m4s`-style text. Whole seconds because tags and config never need less, and
/// a round trip through text must give the same value back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration: expected something like 90s, 30m, 2h, 1d or 1h30m")]
    Empty,
    #[error(
        "invalid duration '{0}': expected something like 90s, 30m, 2h, 1d, 1h30m or a number of seconds"
    )]
    Invalid(String),
    #[error("duration '{0}' is too long (at most 100 years)")]
    Overflow(String),
}

/// The longest duration accepted: a century. Anything longer is a typo, and keeping
/// every duration this small lets deadline arithmetic never overflow a timestamp.
pub const MAX_SECS: u64 = 100 * 365 * 86_400;

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn as_duration(self) -> Duration {
        self.0
    }

    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// A `chrono` duration for arithmetic on wall-clock deadlines.
    pub fn to_chrono(self) -> chrono::TimeDelta {
        i64::try_from(self.0.as_secs())
            .ok()
            .and_then(chrono::TimeDelta::try_seconds)
            .unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(Duration::from_secs(d.as_secs()))
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let invalid = || DurationError::Invalid(input.to_string());
        let overflow = || DurationError::Overflow(input.to_string());
        let capped = |secs: u64| {
            if secs > MAX_SECS {
                Err(overflow())
            } else {
                Ok(Self::from_secs(secs))
            }
        };
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<u64>().map_err(|_| overflow()).and_then(capped);
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        // Units must appear at most once and from largest to smallest, so `30s1h`
        // (almost certainly a typo) is refused rather than silently summed.
        let mut next_unit = 0;
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let pos = UNITS[next_unit..]
                .iter()
                .position(|(u, _)| *u == c.to_ascii_lowercase())
                .ok_or_else(invalid)?;
            if digits.is_empty() {
                return Err(invalid());
            }
            let (_, factor) = UNITS[next_unit + pos];
            let n: u64 = digits.parse().map_err(|_| overflow())?;
            total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(overflow)?;
            digits.clear();
            next_unit += pos + 1;
        }
        if !digits.is_empty() {
            return Err(invalid());
        }
        capped(total)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.as_secs();
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, factor) in UNITS {
            let n = rest / factor;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest %= factor;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML users write `heartbeat-interval: 60` as often as `60s`; accept both.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Self::from_secs(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        s.parse::<HumanDuration>().unwrap().as_secs()
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("30m"), 1_800);
        assert_eq!(secs("2h"), 7_200);
        assert_eq!(secs("1d"), 86_400);
        assert_eq!(secs("1h30m"), 5_400);
        assert_eq!(secs("60"), 60);
        assert_eq!(secs("1d2h3m4s"), 93_784);
        assert_eq!(secs(" 5M "), 300);
    }

    #[test]
    fn rejects_nonsense_with_the_input_named() {
        assert_eq!("".parse::<HumanDuration>(), Err(DurationError::Empty));
        for bad in [
            "h", "1x", "1.5h", "-1h", "1h1h", "30s1h", "2h 30m", "1hh", "5m3",
        ] {
            let err = bad.parse::<HumanDuration>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        for huge in ["99999999999999999999d", "18446744073709551615", "36501d"] {
            assert!(
                matches!(
                    huge.parse::<HumanDuration>(),
                    Err(DurationError::Overflow(_))
                ),
                "{huge}"
            );
        }
        assert_eq!(
            "36500d".parse::<HumanDuration>().unwrap().as_secs(),
            MAX_SECS
        );
        assert_eq!(
            HumanDuration::from_secs(u64::MAX).to_chrono(),
            chrono::TimeDelta::MAX
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["0s", "90s", "1m30s", "2h", "1d", "1h30m", "1d2h3m4s"] {
            let d: HumanDuration = s.parse().unwrap();
            let shown = d.to_string();
            assert_eq!(shown.parse::<HumanDuration>().unwrap(), d);
        }
        assert_eq!(HumanDuration::from_secs(5_400).to_string(), "1h30m");
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m30s");
    }

    #[test]
    fn deserializes_numbers_and_text() {
        let d: HumanDuration = serde_yaml_ng::from_str("60").unwrap();
        assert_eq!(d.as_secs(), 60);
        let d: HumanDuration = serde_yaml_ng::from_str("1h").unwrap();
        assert_eq!(d.as_secs(), 3_600);
        assert!(serde_yaml_ng::from_str::<HumanDuration>("soon").is_err());
    }
}
