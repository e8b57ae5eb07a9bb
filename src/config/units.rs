//! Units in the config file: durations ("250ms", "30s", humantime) and
//! byte sizes (an integer, or digits with a binary unit such as "64MiB"),
//! their serde adapters (`#[serde(with = ...)]`, written back the way an
//! operator would write them, so `--check-config` prints a file that
//! parses again), and the checks every duration shares: at most
//! [`MAX_DURATION`], and positive where "0s" means nothing.
//!
//! Not here: which key takes which unit (the tables), and how an error
//! is worded beyond its "allowed:" part ([`super::out_of_range`]).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

use super::{ConfigError, invalid, out_of_range};

/// Longest accepted duration: far beyond any sensible timeout, and small
/// enough that `Instant + duration` can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);

/// `d` is at most [`MAX_DURATION`].
pub fn at_most_max(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d > MAX_DURATION {
        return Err(out_of_range(
            key,
            format!("{:?}", format_duration(&d)),
            format!("at most {:?}", format_duration(&MAX_DURATION)),
        ));
    }
    Ok(d)
}

/// `d` is not "0s" (and at most [`MAX_DURATION`]); `example` shows a
/// good value in the error ("2s").
pub fn positive(key: &'static str, d: Duration, example: &str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(
            key,
            format!("\"0s\" is out of range; allowed: a positive duration such as \"{example}\""),
        ));
    }
    at_most_max(key, d)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); allowed: a duration such as \"250ms\", \"30s\", \"0s\"")
    })
}

pub fn format_duration(d: &Duration) -> String {
    humantime::format_duration(*d).to_string()
}

/// Durations as humantime strings ("250ms", "30s").
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Optional durations (keys of one sink type only).
pub mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

const BYTE_SIZE_ALLOWED: &str = "allowed: an integer (bytes) or a string with a binary unit such as \"512KiB\", \"64MiB\", \"1GiB\"";

/// Parses a byte size: digits, optionally followed by a binary unit
/// (B, KiB, MiB, GiB, TiB; a space between is allowed).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid byte size {text:?}; {BYTE_SIZE_ALLOWED}");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(bad)
}

/// Byte sizes: an integer or a string with a binary unit; written back
/// with the largest unit that divides them.
pub mod byte_size {
    use super::*;

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if *n != 0 && n.is_multiple_of(1u64 << shift) {
                return s.serialize_str(&format!("{}{unit}", n >> shift));
            }
        }
        s.serialize_u64(*n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Int(u64),
            Text(String),
        }
        match Size::deserialize(d) {
            Ok(Size::Int(n)) => Ok(n),
            Ok(Size::Text(t)) => parse_byte_size(&t).map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(format!(
                "invalid byte size; {BYTE_SIZE_ALLOWED}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_binary_units_and_refuse_overflow() {
        assert_eq!(parse_byte_size("512"), Ok(512));
        assert_eq!(parse_byte_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        for bad in ["12 parsecs", "1.5GiB", "", "99999999999TiB"] {
            let e = parse_byte_size(bad).expect_err(bad);
            assert!(e.contains("KiB") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn durations_are_bounded_and_positive_where_asked() {
        assert!(at_most_max("k", MAX_DURATION).is_ok());
        let e = at_most_max("k", MAX_DURATION * 2).unwrap_err().to_string();
        assert!(
            e.starts_with("k: ") && e.contains("out of range; allowed: at most"),
            "{e}"
        );
        let e = positive("k", Duration::ZERO, "2s").unwrap_err().to_string();
        assert_eq!(
            e,
            "k: \"0s\" is out of range; allowed: a positive duration such as \"2s\""
        );
    }
}
