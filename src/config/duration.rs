//! Durations as people write them: `30s`, `15m`, `6h`, `2d`, `500ms`, `1h30m`.

use std::time::Duration;

use super::setting::FromText;

impl FromText for Duration {
    fn from_text(text: &str) -> Result<Duration, String> {
        parse_duration(text)
    }
}

/// Reads `6h`, `30m`, `45s`, `2d`, `500ms`, or combinations such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("is empty (write a duration such as \"30m\" or \"6h\")".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "\"{text}\" is not a duration (write a number and a unit: ms, s, m, h, d — e.g. \"30m\")"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{text}\" has a number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            "d" => Duration::from_secs(number * 86_400),
            _ => {
                return Err(format!(
                    "\"{text}\" is not a duration (units are ms, s, m, h, d — e.g. \"30m\")"
                ));
            }
        };
        total += part;
    }
    Ok(total)
}

/// `value`, unless it is shorter than `least`.
pub(super) fn at_least(value: Duration, least: &str) -> Result<Duration, String> {
    match parse_duration(least) {
        Ok(floor) if value < floor => Err(format!("must be at least {least}")),
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21_600));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("6 hours").is_err());
        assert!(parse_duration("").is_err());
    }
}
