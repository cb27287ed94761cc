//! Sizes as written in the config (`max_body_size = "10MiB"`): a number of bytes, as a TOML
//! integer or a string, or a string with a unit. It owns the units and the error text; the
//! caller names the key.
//!
//! NOTE: a few lines here rather than the `bytesize` or `byte-unit` crate: the units wanted are
//! a short table (no fractions, no bits), and a dependency would add its own spellings (`1.5 MB`,
//! `1 mebibyte`) to what a config may say, and its own error text in place of one that says what
//! to write.

use serde::Deserialize;

/// Units a size may carry, case-insensitive: binary (`KiB`, `MiB`, `GiB`, and HAProxy's `k`,
/// `m`, `g`, which are binary too) and decimal (`KB`, `MB`, `GB`); `B` or none is bytes.
pub const SIZE_UNITS: [(&str, u64); 10] = [
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
];

/// A size as written: a TOML integer or a string.
#[derive(Debug)]
pub(super) enum FileSize {
    Int(i64),
    Text(String),
}

/// By hand rather than `#[serde(untagged)]`, whose error would not say what to write.
impl<'de> Deserialize<'de> for FileSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FileSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"10MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FileSize, E> {
                Ok(FileSize::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FileSize, E> {
                Ok(FileSize::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileSize, E> {
                Ok(FileSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The number of bytes a size stands for; at least 1 (a `0` is refused: nginx reads
/// `client_max_body_size 0` as no limit, so it would say the opposite to some readers).
pub(super) fn bytes(size: &FileSize) -> Result<u64, String> {
    let n = match size {
        FileSize::Int(n) => u64::try_from(*n).map_err(|_| format!("{n}: must not be negative"))?,
        FileSize::Text(s) => parse(s)?,
    };
    if n == 0 {
        return Err("0: leave the key out for no limit, or give at least 1 byte".to_string());
    }
    Ok(n)
}

/// `"10MiB"`, `"512 KiB"`, `"1000"`: digits, optional spaces, an optional unit of
/// [`SIZE_UNITS`].
fn parse(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?}: write a whole number of bytes, or one with a unit: B, KiB, MiB, GiB (or k, m, g), KB, MB, GB, as in \"10MiB\""
        )
    };
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit = t[digits..].trim_start().to_ascii_lowercase();
    let scale = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?}: too large (at most {} bytes)", u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_and_without_units() {
        let text = |s: &str| bytes(&FileSize::Text(s.to_string()));
        assert_eq!(text("10MiB"), Ok(10 << 20));
        assert_eq!(text("512KiB"), Ok(512 << 10));
        assert_eq!(text("512 kib"), Ok(512 << 10));
        assert_eq!(text("1000"), Ok(1000));
        assert_eq!(text("1000B"), Ok(1000));
        assert_eq!(text("2MB"), Ok(2_000_000));
        assert_eq!(text("1g"), Ok(1 << 30));
        assert_eq!(bytes(&FileSize::Int(4096)), Ok(4096));
        for bad in ["", "MiB", "1.5MiB", "10 MiBs", "-1", "ten"] {
            assert!(
                text(bad).unwrap_err().contains("write a whole number"),
                "{bad}"
            );
        }
        assert!(text("0").unwrap_err().contains("leave the key out"));
        assert!(bytes(&FileSize::Int(-5)).unwrap_err().contains("negative"));
        assert!(text("99999999999GiB").unwrap_err().contains("too large"));
    }
}
