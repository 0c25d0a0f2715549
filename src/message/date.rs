//! RFC 5322 §3.3 date-time formatting from a Unix time given by the caller (always in UTC,
//! `+0000`). Performs no I/O and never reads the clock.

const SECS_PER_DAY: u64 = 86_400;
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mon, 23 Nov 2026 20:38:44 +0000`.
pub fn rfc5322_date(unix_secs: u64) -> String {
    let days = unix_secs / SECS_PER_DAY;
    let secs = unix_secs % SECS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4).
    let weekday = WEEKDAYS[usize::try_from((days + 4) % 7).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!(
        "{weekday}, {day:02} {month_name} {year} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian (year, month 1–12, day 1–31) of `days` since 1970-01-01.
///
/// Counts in 400-year eras starting on 1 March, so the leap day is the last day of a
/// "computational year" and every month length but February's is fixed.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    const EPOCH_SHIFT: u64 = 719_468;
    const DAYS_PER_ERA: u64 = 146_097;
    let z = days + EPOCH_SHIFT;
    let era = z / DAYS_PER_ERA;
    let day_of_era = z % DAYS_PER_ERA;
    // Year within the era: subtract the leap days (every 4th year, not every 100th, but the
    // 400th — which is the era's last day).
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524
        - day_of_era / (DAYS_PER_ERA - 1))
        / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: lengths 31 30 31 30 31 31 30 31 30 31 31 28/29, i.e. 153 days per 5.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (86_399, "Thu, 01 Jan 1970 23:59:59 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (951_868_800, "Wed, 01 Mar 2000 00:00:00 +0000"),
            (1_078_012_800, "Sun, 29 Feb 2004 00:00:00 +0000"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 +0000"),
            (4_107_456_000, "Sun, 28 Feb 2100 00:00:00 +0000"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 +0000"),
            (1_735_689_599, "Tue, 31 Dec 2024 23:59:59 +0000"),
            (1_735_689_600, "Wed, 01 Jan 2025 00:00:00 +0000"),
            (1_795_466_324, "Mon, 23 Nov 2026 20:38:44 +0000"),
            (2_147_483_647, "Tue, 19 Jan 2038 03:14:07 +0000"),
        ];
        for (secs, expected) in cases {
            assert_eq!(rfc5322_date(secs), expected, "{secs}");
        }
    }

    #[test]
    fn civil_dates_advance_one_day_at_a_time() {
        // Walk 1970..2430 day by day and check the calendar rules independently.
        let (mut year, mut month, mut day) = (1970, 1, 1);
        for days in 0..168_000 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let length = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > length {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }
}
