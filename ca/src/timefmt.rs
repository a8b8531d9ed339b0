//! Times and durations the way operators read and write them: RFC 3339 in and out (the CLI's
//! `--before`, the API's `before`, every printed time) and short durations (`7d`, `36h`).
//! One place, so the CLI, the API, `check` and `root list` agree on every spelling.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `t` as RFC 3339 (`2025-01-31T12:00:00Z`).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Unix seconds as RFC 3339 (the number itself if it is out of range).
pub(crate) fn unix_rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(rfc3339)
        .unwrap_or_else(|_| unix.to_string())
}

/// Parses an RFC 3339 time; the error says what was wrong and shows the expected spelling.
pub(crate) fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}); use e.g. 2025-01-31T12:00:00Z"))
}

/// `d` the way operators write it (`7d`, `36h`, `90s`): the largest unit that divides it.
/// (humantime would print 40 days as "1month 9days 13h 26m 24s".)
pub(crate) fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `unix + d` in Unix seconds, saturating: an absurd operator-given duration must mean "very
/// long", never wrap around to a time in the past.
pub(crate) fn add_secs(unix: i64, d: Duration) -> i64 {
    unix.saturating_add(secs(d))
}

/// `unix - d` in Unix seconds, saturating (the start of a look-back window).
pub(crate) fn sub_secs(unix: i64, d: Duration) -> i64 {
    unix.saturating_sub(secs(d))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_rejects_other_spellings() {
        let t = parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_738_324_800);
        assert_eq!(rfc3339(t), "2025-01-31T12:00:00Z");
        assert_eq!(unix_rfc3339(1_738_324_800), "2025-01-31T12:00:00Z");
        let e = parse_rfc3339("2025-01-31").unwrap_err();
        assert!(
            e.contains("RFC 3339") && e.contains("2025-01-31T12:00:00Z"),
            "{e}"
        );
    }

    #[test]
    fn short_durations_use_the_largest_whole_unit() {
        assert_eq!(short_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(short_duration(Duration::from_secs(36 * 3_600)), "36h");
        assert_eq!(short_duration(Duration::from_secs(120)), "2m");
        assert_eq!(short_duration(Duration::from_secs(90)), "90s");
        assert_eq!(short_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn adding_and_subtracting_saturate() {
        assert_eq!(add_secs(10, Duration::from_secs(5)), 15);
        assert_eq!(add_secs(10, Duration::MAX), i64::MAX);
        assert_eq!(sub_secs(10, Duration::from_secs(5)), 5);
        assert_eq!(sub_secs(-10, Duration::MAX), i64::MIN);
    }
}
