//! Durations as users write them: `500ms`, `5s`, `1.5s`, `10m`, `1h`, `7d`, or a bare number
//! of seconds (kdev.yaml, `kdev gc --older-than`, the controller's flags).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a duration: use a number with ms, s, m, h or d, like 500ms, 5s, 1.5s, 10m, 1h \
     or 7d (a bare number is seconds)"
)]
pub struct DurationError(String);

/// Parse a duration. Fractions are exact to the nanosecond (`1.5s`, `0.25h`); a space between
/// the number and its unit is allowed; negative, unknown units and overflow are errors.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_ns: u128 = match unit.trim_start() {
        "ms" => 1_000_000,
        "s" | "" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad());
    }
    let digits = |d: &str| -> Result<u128, DurationError> {
        if d.is_empty() {
            Ok(0)
        } else if d.len() > 30 || !d.bytes().all(|b| b.is_ascii_digit()) {
            Err(bad())
        } else {
            d.parse().map_err(|_| bad())
        }
    };
    let mut ns = digits(whole)?.checked_mul(unit_ns).ok_or_else(bad)?;
    if !fraction.is_empty() {
        // Only the digits that can matter (a nanosecond of a day needs 14).
        let kept = &fraction[..fraction.len().min(18)];
        digits(fraction)?;
        ns += digits(kept)? * unit_ns / 10u128.pow(kept.len() as u32);
    }
    let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (ns % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("2"), Duration::from_secs(2));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("2d"), Duration::from_secs(2 * 86400));
        assert_eq!(ok(" 10 s "), Duration::from_secs(10));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn fractions_are_exact() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25h"), Duration::from_secs(900));
        assert_eq!(ok(".5m"), Duration::from_secs(30));
        assert_eq!(ok("2."), Duration::from_secs(2));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(ok("1.0000000000000000000000001s"), Duration::from_secs(1));
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "x",
            "h",
            "-1s",
            "5y",
            "5 S",
            "1..5s",
            ".",
            "1.2.3s",
            "s5",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.to_string().contains("not a duration"), "{bad}: {err}");
        }
    }
}
