//! Whole-second UTC instants in the event form, `2026-01-31T06:00:00Z`, and nothing else:
//! any other form is left to the Python paths, which read every form upstream uses.

/// Seconds since 1970-01-01T00:00:00Z of an event-form date, or None for any other text or
/// an impossible date (Python's datetime would refuse it too: years 1 to 9999).
pub fn parse_event_form(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// The event form of an instant, or None outside years 1 to 9999.
pub fn format_event_form(epoch: i64) -> Option<[u8; 20]> {
    let (year, month, day, hour, minute, second) = civil(epoch)?;
    let mut out = *b"0000-00-00T00:00:00Z";
    for (at, width, value) in [
        (0, 4, year),
        (5, 2, month),
        (8, 2, day),
        (11, 2, hour),
        (14, 2, minute),
        (17, 2, second),
    ] {
        let mut rest = value;
        for index in (at..at + width).rev() {
            out[index] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    }
    Some(out)
}

/// Year, month, day, hour, minute and second of an instant, within years 1 to 9999.
pub fn civil(epoch: i64) -> Option<(i64, i64, i64, i64, i64, i64)> {
    let days = epoch.div_euclid(86_400);
    let seconds = epoch.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return None;
    }
    Some((
        year,
        month,
        day,
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    ))
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's algorithms (proleptic Gregorian, as Python's datetime).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-02-08T12:00:22Z",
        ] {
            let epoch = parse_event_form(text).unwrap();
            assert_eq!(&format_event_form(epoch).unwrap(), text.as_bytes());
        }
        assert_eq!(
            parse_event_form("2026-02-08T12:00:22Z"),
            Some(1_770_552_022)
        );
    }

    #[test]
    fn refuses_other_forms() {
        for text in [
            "2023-02-29T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-02-08T24:00:00Z",
            "2026-02-08T12:00:60Z",
            "2026-02-08t12:00:22z",
            "2026-02-08T12:00:22+00:00",
            "2026-02-08T12:00:22.5Z",
            "/Date(1581507672000)/",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_event_form(text), None, "{text}");
        }
        assert_eq!(
            format_event_form(parse_event_form("9999-12-31T23:59:59Z").unwrap() + 1),
            None
        );
    }
}
