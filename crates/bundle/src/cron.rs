//! Cron schedules of `triggers.cron`: one parser for the registry (which
//! refuses a bad schedule at push) and the gateways (which fire them).
//!
//! OpenLambda parses schedules with robfig/cron's standard parser: five
//! fields (minute, hour, day of month, month, day of week) and the
//! `@hourly`-style descriptors. sock takes the same, plus an optional
//! leading seconds field (six fields), so a schedule can fire more often
//! than once a minute. robfig's `@every <duration>` is refused: it counts
//! from when each boss started, so two gateways could not agree on its
//! fire times. Schedules are evaluated in UTC on every gateway, so all of
//! them compute the same fire times.
//!
//! Parsing is croner's, with OpenLambda's five fields and descriptors plus
//! the optional seconds field; there is no year field. A schedule is
//! refused at push with the schedule and why ("it has 4 fields", "it never
//! fires", or croner's reason with the field ranges); repeated schedules
//! are dropped.
use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
}

impl Schedule {
    /// Parses `schedule`, or says in a sentence why it is not one.
    pub fn parse(schedule: &str) -> Result<Schedule, String> {
        let trimmed = schedule.trim();
        if trimmed.is_empty() {
            return Err("it is empty".into());
        }
        if trimmed.to_ascii_lowercase().starts_with("@every") {
            return Err(
                "@every is not supported: its fire times depend on when each \
                 scheduler started; write cron fields instead, e.g. '*/5 * * * *'"
                    .into(),
            );
        }
        let trimmed = match trimmed.to_ascii_lowercase().as_str() {
            // robfig's name for @daily, which croner lacks.
            "@midnight" => "@daily",
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@hourly" => trimmed,
            d if d.starts_with('@') => {
                return Err(format!(
                    "'{trimmed}' is not a descriptor; there are @yearly (@annually), \
                     @monthly, @weekly, @daily (@midnight) and @hourly"
                ));
            }
            _ => trimmed,
        };
        let fields = trimmed.split_whitespace().count();
        if !(trimmed.starts_with('@') || fields == 5 || fields == 6) {
            return Err(format!(
                "it has {fields} fields; a schedule has 5 (minute hour day-of-month month \
                 day-of-week) or 6 with a leading seconds field"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(trimmed).map_err(|e| {
            format!(
                "{e} (fields: [second 0-59] minute 0-59, hour 0-23, day-of-month 1-31, \
                 month 1-12 or JAN-DEC, day-of-week 0-7 or SUN-SAT)"
            )
        })?;
        let schedule = Schedule { cron };
        // A pattern such as "0 0 30 2 *" parses but never matches.
        let now = DateTime::from(std::time::SystemTime::now());
        if schedule.next_after(now).is_none() {
            return Err("it never fires".into());
        }
        Ok(schedule)
    }

    /// The first fire time strictly after `after`; `None` if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// `next_after` in Unix milliseconds.
    pub fn next_after_unix_ms(&self, after_unix_ms: i64) -> Option<i64> {
        let after = DateTime::from_timestamp_millis(after_unix_ms)?;
        Some(self.next_after(after)?.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .expect(schedule)
            .next_after(at(after))
            .expect("a next fire time")
            .to_rfc3339()
    }

    #[test]
    fn five_fields_are_openlambdas_minutes() {
        assert_eq!(
            next("*/5 * * * *", "2026-12-01T03:07:12Z"),
            "2026-12-01T03:10:00+00:00"
        );
        // Strictly after: a fire time is not its own next one.
        assert_eq!(
            next("*/5 * * * *", "2026-12-01T03:10:00Z"),
            "2026-12-01T03:15:00+00:00"
        );
        assert_eq!(
            next("30 4 1 * *", "2026-12-01T05:00:00Z"),
            "2027-01-01T04:30:00+00:00"
        );
        assert_eq!(
            next("@hourly", "2026-12-01T03:07:12Z"),
            "2026-12-01T04:00:00+00:00"
        );
        assert_eq!(
            next("@midnight", "2026-12-01T03:07:12Z"),
            "2026-12-02T00:00:00+00:00"
        );
        assert_eq!(
            next("0 9 * * MON", "2026-12-01T03:00:00Z"),
            "2026-12-07T09:00:00+00:00"
        );
    }

    #[test]
    fn a_sixth_field_in_front_is_seconds() {
        assert_eq!(
            next("*/2 * * * * *", "2026-12-01T03:07:12.500Z"),
            "2026-12-01T03:07:14+00:00"
        );
        let schedule = Schedule::parse("* * * * * *").expect("every second");
        assert_eq!(
            schedule.next_after_unix_ms(1_000_500),
            Some(1_001_000),
            "milliseconds round up to the next whole second"
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        for (schedule, needle) in [
            ("", "it is empty"),
            ("   ", "it is empty"),
            ("* * * *", "it has 4 fields"),
            ("* * * * * * 2030", "it has 7 fields"),
            ("@every 5m", "@every is not supported"),
            (
                "61 * * * *",
                "out of bounds. (fields: [second 0-59] minute 0-59",
            ),
            ("* * * * BLAH", "illegal"),
            ("@fortnightly", "'@fortnightly' is not a descriptor"),
            ("0 0 30 2 *", "it never fires"),
        ] {
            let err = Schedule::parse(schedule).expect_err(schedule);
            assert!(err.contains(needle), "{schedule:?}: {err}");
        }
    }
}
