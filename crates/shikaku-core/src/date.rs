//! Calendar dates and half-open date intervals.
//!
//! Coverage is expressed in whole days: a start date (資格取得日) and an end date that is the
//! first day *without* coverage (資格喪失日). Dates are stored as days since 1970-01-01 so that
//! comparisons are integer comparisons; conversion uses the proleptic Gregorian calendar.

use std::fmt;
use std::str::FromStr;

/// A calendar day, stored as the number of days since 1970-01-01.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Date(pub i32);

/// Why a text could not be read as a date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DateError {
    /// The text is not of the form `YYYY-MM-DD`.
    #[error("date {0:?} is not of the form YYYY-MM-DD")]
    Format(String),
    /// The month or day is outside the calendar (e.g. 2025-02-30).
    #[error("date {0:?} does not exist in the calendar")]
    NoSuchDay(String),
    /// The year is outside 1900..=2199, the range the ledger accepts.
    #[error("date {0:?} is outside the years 1900..=2199")]
    OutOfRange(String),
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl Date {
    /// Builds a date from its parts, refusing days that do not exist.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if month <= 2 { year - 1 } else { year };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let m = month as i32;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i32 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(Date(era * 146_097 + doe - 719_468))
    }

    /// The (year, month, day) of this date.
    pub fn ymd(self) -> (i32, u32, u32) {
        let z = self.0 + 719_468;
        let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// The date `days` later (or earlier, when negative).
    pub fn add_days(self, days: i32) -> Date {
        Date(self.0 + days)
    }

    /// The same month and day `years` later; 29 February becomes 1 March in common years,
    /// which is how Japanese law counts a birthday anniversary for age transitions.
    pub fn add_years(self, years: i32) -> Date {
        let (y, m, d) = self.ymd();
        Date::from_ymd(y + years, m, d).unwrap_or_else(|| {
            Date::from_ymd(y + years, 3, 1).unwrap_or(Date(self.0 + 365 * years))
        })
    }

    /// The date of the given day-of-epoch in milliseconds (UTC+9, Japan's civil day).
    pub fn from_unix_ms_jst(ms: u64) -> Date {
        const JST_OFFSET_MS: u64 = 9 * 3_600_000;
        Date(((ms + JST_OFFSET_MS) / 86_400_000) as i32)
    }

    /// Milliseconds since the Unix epoch at 00:00 JST of this date (used by the generator).
    pub fn start_unix_ms_jst(self) -> u64 {
        (i64::from(self.0) * 86_400_000 - 9 * 3_600_000).max(0) as u64
    }
}

impl FromStr for Date {
    type Err = DateError;

    fn from_str(text: &str) -> Result<Date, DateError> {
        let bytes = text.as_bytes();
        let well_formed = bytes.len() == 10
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && bytes.iter().enumerate().all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
        if !well_formed {
            return Err(DateError::Format(text.to_owned()));
        }
        let number = |range: std::ops::Range<usize>| -> u32 {
            text[range].bytes().fold(0, |acc, b| acc * 10 + u32::from(b - b'0'))
        };
        let year = number(0..4) as i32;
        if !(1900..=2199).contains(&year) {
            return Err(DateError::OutOfRange(text.to_owned()));
        }
        Date::from_ymd(year, number(5..7), number(8..10))
            .ok_or_else(|| DateError::NoSuchDay(text.to_owned()))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Date, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A half-open interval of days: `start` is covered, `end` (when present) is the first day not
/// covered. `end == None` means "until further notice".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct DateRange {
    /// First covered day.
    pub start: Date,
    /// First day no longer covered; `None` while open-ended.
    pub end: Option<Date>,
}

impl DateRange {
    /// Whether `day` lies inside the interval.
    pub fn contains(&self, day: Date) -> bool {
        day >= self.start && self.end.is_none_or(|end| day < end)
    }

    /// Whether the interval covers no day at all (same-day start and end).
    pub fn is_empty(&self) -> bool {
        self.end.is_some_and(|end| end <= self.start)
    }

    /// Whether two intervals share at least one day.
    pub fn overlaps(&self, other: &DateRange) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.end.is_none_or(|end| other.start < end)
            && other.end.is_none_or(|end| self.start < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_three_centuries() {
        // Proves from_ymd and ymd are inverse for every day of 1900..2200.
        let first = Date::from_ymd(1900, 1, 1).unwrap();
        let last = Date::from_ymd(2199, 12, 31).unwrap();
        for day in first.0..=last.0 {
            let (y, m, d) = Date(day).ymd();
            assert_eq!(Date::from_ymd(y, m, d), Some(Date(day)));
        }
        assert_eq!(Date::from_ymd(1970, 1, 1), Some(Date(0)));
    }

    #[test]
    fn parse_rejects_bad_dates_with_reasons() {
        assert_eq!("2025-02-29".parse::<Date>(), Err(DateError::NoSuchDay("2025-02-29".into())));
        assert_eq!("2025-2-1".parse::<Date>(), Err(DateError::Format("2025-2-1".into())));
        assert_eq!("1800-01-01".parse::<Date>(), Err(DateError::OutOfRange("1800-01-01".into())));
        assert_eq!("2024-02-29".parse::<Date>().unwrap().to_string(), "2024-02-29");
    }

    #[test]
    fn leap_day_birthdays_move_to_march_first() {
        let born = Date::from_ymd(1952, 2, 29).unwrap();
        assert_eq!(born.add_years(75).to_string(), "2027-03-01");
    }

    #[test]
    fn half_open_intervals() {
        let d = |s: &str| s.parse::<Date>().unwrap();
        let r = DateRange { start: d("2025-04-01"), end: Some(d("2025-05-01")) };
        assert!(r.contains(d("2025-04-30")));
        assert!(!r.contains(d("2025-05-01")));
        let same_day = DateRange { start: d("2025-04-01"), end: Some(d("2025-04-01")) };
        assert!(same_day.is_empty() && !same_day.contains(d("2025-04-01")));
    }
}
