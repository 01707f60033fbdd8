//! `strftime_now(format)`, the template global transformers defines as
//! `datetime.now().strftime(format)`: the local time, formatted by chrono,
//! whose specifiers (and `-`, `_`, `0` flags) print as CPython's on glibc
//! in the C locale. Two are Python's own: `%f` is microseconds (chrono's is
//! nanoseconds), and `%z`/`%Z` print nothing (`datetime.now()` is naive).
//! A specifier chrono does not know is an error, where glibc would copy it.
//! Llama-3.1-style templates print today's date with it.

use std::fmt::{Display, Write};

use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use chrono::{DateTime, Local, TimeZone};
use minijinja::{Error, ErrorKind};

/// `strftime_now(fmt)`: now, in the local time zone, formatted by `fmt`.
pub(super) fn now(fmt: &str) -> Result<String, Error> {
    format(&Local::now(), fmt)
}

/// `t` formatted by `fmt` as CPython formats the naive datetime of its
/// wall-clock time (`%s` still counts from the epoch, as `mktime` does).
pub(super) fn format<Tz: TimeZone>(t: &DateTime<Tz>, fmt: &str) -> Result<String, Error>
where
    Tz::Offset: Display,
{
    let bad = || {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {fmt:?}"),
        )
    };
    let mut items = Vec::new();
    for item in StrftimeItems::new(fmt).parse().map_err(|_| bad())? {
        match item {
            Item::Numeric(Numeric::Nanosecond, _) => items.extend(StrftimeItems::new("%6f")),
            Item::Fixed(
                Fixed::TimezoneName
                | Fixed::TimezoneOffset
                | Fixed::TimezoneOffsetColon
                | Fixed::TimezoneOffsetDoubleColon
                | Fixed::TimezoneOffsetTripleColon,
            ) => {}
            item => items.push(item),
        }
    }
    // Formatting fails (rather than panics) on items the value lacks.
    let mut out = String::new();
    write!(out, "{}", t.format_with_items(items.iter())).map_err(|_| bad())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, NaiveDate, NaiveDateTime};

    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|d| d.and_hms_micro_opt(h, mi, s, us))
            .unwrap()
    }

    /// Expected strings from CPython 3.11's `datetime(...).strftime` on
    /// glibc, with `TZ=Asia/Kolkata` (+05:30, for `%s`).
    #[test]
    fn formats_as_cpython_on_glibc() {
        let kolkata = FixedOffset::east_opt(19_800).unwrap();
        let fmt = "%a %A %b %B %h|%d %e %m %y %Y %C|%H %I %k %l %M %S %p %P|%j %u %w %U %W %V %G %g\
                   |%D %F %T %R %r|%c|%x %X|%f [%z] [%Z] %% %%f %n%t|%-d %-m %_d %-H %-j %_m %0e|%s";
        for (t, want) in [
            (at(2024, 12, 30, 13, 5, 9, 42), "Mon Monday Dec December Dec|30 30 12 24 2024 20|13 01 13  1 05 09 PM pm|365 1 1 52 53 01 2025 25|12/30/24 2024-12-30 13:05:09 13:05 01:05:09 PM|Mon Dec 30 13:05:09 2024|12/30/24 13:05:09|000042 [] [] % %f \n\t|30 12 30 13 365 12 30|1735544109"),
            (at(2021, 1, 3, 0, 7, 0, 0), "Sun Sunday Jan January Jan|03  3 01 21 2021 20|00 12  0 12 07 00 AM am|003 7 0 01 00 53 2020 20|01/03/21 2021-01-03 00:07:00 00:07 12:07:00 AM|Sun Jan  3 00:07:00 2021|01/03/21 00:07:00|000000 [] [] % %f \n\t|3 1  3 0 3  1 03|1609612620"),
            (at(2020, 12, 31, 23, 59, 59, 999_999), "Thu Thursday Dec December Dec|31 31 12 20 2020 20|23 11 23 11 59 59 PM pm|366 4 4 52 52 53 2020 20|12/31/20 2020-12-31 23:59:59 23:59 11:59:59 PM|Thu Dec 31 23:59:59 2020|12/31/20 23:59:59|999999 [] [] % %f \n\t|31 12 31 23 366 12 31|1609439399"),
            (at(2027, 1, 1, 12, 0, 0, 0), "Fri Friday Jan January Jan|01  1 01 27 2027 20|12 12 12 12 00 00 PM pm|001 5 5 00 00 53 2026 26|01/01/27 2027-01-01 12:00:00 12:00 12:00:00 PM|Fri Jan  1 12:00:00 2027|01/01/27 12:00:00|000000 [] [] % %f \n\t|1 1  1 12 1  1 01|1798785000"),
        ] {
            let local = t.and_local_timezone(kolkata).unwrap();
            assert_eq!(format(&local, fmt).unwrap(), want, "{t}");
            // Python prints a naive datetime whatever the zone.
            let utc = t.and_utc();
            let no_s = &fmt[..fmt.len() - 3];
            assert_eq!(format(&utc, no_s).unwrap(), want[..want.rfind('|').unwrap()]);
        }
        let t = at(1969, 12, 31, 0, 0, 0, 0).and_utc();
        assert_eq!(
            format(&t, "%Y-%m-%d %a %j %d %b %Y").unwrap(),
            "1969-12-31 Wed 365 31 Dec 1969"
        );
    }

    #[test]
    fn invalid_specifiers_are_errors() {
        let t = at(2024, 1, 1, 0, 0, 0, 0).and_utc();
        for fmt in ["%Q", "%^a", "100%", "%-B", "%#z"] {
            let err = format(&t, fmt).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidOperation, "{fmt}");
            assert!(err.to_string().contains(&format!("{fmt:?}")), "{err}");
        }
    }

    #[test]
    fn now_is_a_valid_date() {
        let today = now("%Y-%m-%d %H:%M:%S.%f").unwrap();
        assert_eq!(today.len(), 26, "{today}");
        assert!(today.as_str() >= "2024", "{today}");
    }
}
