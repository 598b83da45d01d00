//! Human sizes and rates: `64MiB`, `1.5GB`, `50MiB/s`.

use std::fmt;

/// Parses a size such as `4096`, `64KiB`, `64MiB`, `1.5GB` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size '{text}': expected a number such as 64MiB"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size '{text}': '{num}' is not a number"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "invalid size '{text}': unknown unit '{other}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("invalid size '{text}': too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a rate such as `50MiB/s` into bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let size = t.strip_suffix("/s").ok_or_else(|| {
        format!("invalid rate '{text}': expected a size per second such as 50MiB/s")
    })?;
    let bytes = parse_size(size).map_err(|e| e.replacen("size", "rate", 1))?;
    if bytes == 0 {
        return Err(format!("invalid rate '{text}': must be greater than zero"));
    }
    Ok(bytes)
}

/// A number, or text for a person to write (`50MiB/s`, `64MiB`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// Serde: an optional rate given as bytes per second or as text such as `50MiB/s`, checked
/// by [`parse_rate`] (so the API and the console say what the command line says).
pub fn de_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_with(d, |t| {
        parse_rate(t).map_err(|e| format!("speed_limit: {e}"))
    })
}

/// Serde: an optional size given as bytes or as text such as `64MiB`, checked by [`parse_size`].
pub fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_with(d, parse_size)
}

fn de_with<'de, D: serde::Deserializer<'de>>(
    d: D,
    parse: impl Fn(&str) -> Result<u64, String>,
) -> Result<Option<u64>, D::Error> {
    match <Option<NumberOrText> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Bytes shown with binary units: `1.5 MiB`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i < UNITS.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

/// A duration in milliseconds shown as `1h02m03s`, `4m05s` or `1.23s`.
pub struct Millis(pub i64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.max(0);
        let s = ms / 1000;
        if s >= 3600 {
            write!(f, "{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
        } else if s >= 60 {
            write!(f, "{}m{:02}s", s / 60, s % 60)
        } else {
            write!(f, "{:.2}s", ms as f64 / 1000.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("2 KiB").unwrap(), 2048);
        assert!(parse_size("").unwrap_err().contains("expected a number"));
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("-5MiB").is_err());
    }

    #[test]
    fn requests_take_rates_and_sizes_as_numbers_or_text_with_the_cli_messages() {
        use crate::api::TaskOptions;
        let o: TaskOptions = serde_json::from_str(
            r#"{"speed_limit": "50MiB/s", "filter": {"min_size": "1KiB", "max_size": 4096}}"#,
        )
        .unwrap();
        assert_eq!(o.speed_limit, Some((50u64 << 20).into()));
        assert_eq!(
            (o.filter.min_size, o.filter.max_size),
            (Some(1024), Some(4096))
        );
        let o: TaskOptions = serde_json::from_str(r#"{"speed_limit": null}"#).unwrap();
        assert_eq!(o.speed_limit, None);
        assert_eq!(TaskOptions::default().speed_limit, None);
        let e = serde_json::from_str::<TaskOptions>(r#"{"speed_limit": "fast"}"#).unwrap_err();
        let cli = parse_rate("fast").unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("speed_limit: {cli}")),
            "{e}"
        );
        assert!(serde_json::from_str::<TaskOptions>(r#"{"speed_limit": -1}"#).is_err());
        let e =
            serde_json::from_str::<TaskOptions>(r#"{"filter": {"min_size": "1XB"}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn rates_need_per_second_and_a_positive_value() {
        assert_eq!(parse_rate("50MiB/s").unwrap(), 50 << 20);
        assert!(parse_rate("50MiB").unwrap_err().contains("per second"));
        assert!(parse_rate("0MiB/s")
            .unwrap_err()
            .contains("greater than zero"));
        assert!(parse_rate("fastMiB/s")
            .unwrap_err()
            .starts_with("invalid rate"));
    }

    #[test]
    fn bytes_and_durations_display_for_humans() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(3 << 20).to_string(), "3.0 MiB");
        assert_eq!(Millis(1234).to_string(), "1.23s");
        assert_eq!(Millis(245_000).to_string(), "4m05s");
        assert_eq!(Millis(3_723_000).to_string(), "1h02m03s");
    }
}
