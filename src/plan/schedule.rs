//! Time arithmetic for planning: cron slots in a reader's zone, and quiet hours.
//!
//! `croner` evaluates the cron expression on local wall-clock time in the zone: a slot
//! in the spring-forward gap fires once just after the gap, a slot in the autumn
//! overlap fires once, and weekdays use POSIX numbering (0 or 7 = Sunday, 1 = Monday).

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// Every slot of `cron` in `zone` with `after < slot <= upto`, oldest first.
pub fn due_slots(
    cron: &croner::Cron,
    zone: Tz,
    after: DateTime<Utc>,
    upto: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut slots = Vec::new();
    if upto <= after {
        return slots;
    }
    for local in cron.iter_after(after.with_timezone(&zone)) {
        let slot = local.with_timezone(&Utc);
        if slot > upto {
            break;
        }
        if slot > after {
            slots.push(slot);
        }
        // A bound against a pathological every-second pattern over a long outage.
        if slots.len() > 10_000 {
            break;
        }
    }
    slots
}

/// The first slot of `cron` in `zone` after `after`.
pub fn next_slot(cron: &croner::Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.iter_after(after.with_timezone(&zone))
        .map(|local| local.with_timezone(&Utc))
        .find(|slot| *slot > after)
}

/// When an alert planned at `now` may go out to a reader in `zone` with quiet hours
/// `(start, end)` in minutes after local midnight: `now` outside them, else their end.
pub fn release_after_quiet_hours(
    now: DateTime<Utc>,
    zone: Tz,
    quiet: Option<(u32, u32)>,
) -> DateTime<Utc> {
    let Some((start, end)) = quiet else {
        return now;
    };
    if start == end {
        return now;
    }
    let local = now.with_timezone(&zone);
    let minute = local.hour() * 60 + local.minute();
    let quiet_now = if start < end {
        minute >= start && minute < end
    } else {
        minute >= start || minute < end
    };
    if !quiet_now {
        return now;
    }
    // The end is today if we are before it, else tomorrow (a window over midnight).
    let date = if minute < end {
        local.date_naive()
    } else {
        local.date_naive() + Duration::days(1)
    };
    local_instant(zone, date, end).max(now)
}

/// The first instant at or after local `date` + `minutes` in `zone` (a time in a DST
/// gap resolves to the end of the gap; an ambiguous one to its first occurrence).
fn local_instant(zone: Tz, date: NaiveDate, minutes: u32) -> DateTime<Utc> {
    let time = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0).expect("minutes < 1440");
    let mut naive = date.and_time(time);
    for _ in 0..240 {
        match zone.from_local_datetime(&naive) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => naive += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&naive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str) -> croner::Cron {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expr)
            .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local_times(slots: &[DateTime<Utc>], zone: Tz) -> Vec<String> {
        slots
            .iter()
            .map(|s| s.with_timezone(&zone).format("%m-%d %H:%M %:z").to_string())
            .collect()
    }

    /// 07:00 local every day around both DST changes, in zones with whole-hour,
    /// half-hour and no DST shifts.
    #[test]
    fn daily_seven_am_is_seven_am_local_across_dst_in_both_directions() {
        let daily = cron("0 7 * * *");
        let cases: [(Tz, &str, &str); 10] = [
            // US spring forward 2026-03-08, fall back 2026-11-01.
            (
                chrono_tz::America::Los_Angeles,
                "2026-03-06T00:00:00Z",
                "2026-03-11T00:00:00Z",
            ),
            (
                chrono_tz::America::Los_Angeles,
                "2026-10-30T00:00:00Z",
                "2026-11-04T00:00:00Z",
            ),
            (
                chrono_tz::America::New_York,
                "2026-03-06T00:00:00Z",
                "2026-03-11T00:00:00Z",
            ),
            (
                chrono_tz::America::New_York,
                "2026-10-30T00:00:00Z",
                "2026-11-04T00:00:00Z",
            ),
            // EU: 2026-03-29 and 2026-10-25.
            (
                chrono_tz::Europe::Berlin,
                "2026-03-27T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ),
            (
                chrono_tz::Europe::Berlin,
                "2026-10-23T00:00:00Z",
                "2026-10-28T00:00:00Z",
            ),
            // India: +05:30, no DST.
            (
                chrono_tz::Asia::Kolkata,
                "2026-03-27T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ),
            (
                chrono_tz::Asia::Kolkata,
                "2026-10-23T00:00:00Z",
                "2026-10-28T00:00:00Z",
            ),
            // Lord Howe shifts by 30 minutes: back on 2026-04-05, forward on 2026-10-04.
            (
                chrono_tz::Australia::Lord_Howe,
                "2026-04-02T00:00:00Z",
                "2026-04-08T00:00:00Z",
            ),
            (
                chrono_tz::Australia::Lord_Howe,
                "2026-10-01T00:00:00Z",
                "2026-10-07T00:00:00Z",
            ),
        ];
        for (zone, from, to) in cases {
            let slots = due_slots(&daily, zone, utc(from), utc(to));
            let days = (utc(to) - utc(from)).num_days();
            assert!(
                slots.len() as i64 >= days - 1 && slots.len() as i64 <= days,
                "{zone}: {:?}",
                local_times(&slots, zone)
            );
            for slot in &slots {
                let local = slot.with_timezone(&zone);
                assert_eq!((local.hour(), local.minute()), (7, 0), "{zone}: {local}");
            }
            let mut dates: Vec<_> = slots
                .iter()
                .map(|s| s.with_timezone(&zone).date_naive())
                .collect();
            dates.dedup();
            assert_eq!(dates.len(), slots.len(), "{zone}: one slot per day");
        }
        // The UTC instant moves by the DST shift: Lord Howe's by half an hour.
        let zone = chrono_tz::Australia::Lord_Howe;
        let slots = due_slots(
            &daily,
            zone,
            utc("2026-10-02T00:00:00Z"),
            utc("2026-10-06T00:00:00Z"),
        );
        let gaps: Vec<i64> = slots
            .windows(2)
            .map(|w| (w[1] - w[0]).num_minutes())
            .collect();
        assert!(gaps.contains(&(24 * 60 - 30)), "{gaps:?}");
    }

    #[test]
    fn weekly_lands_on_monday_with_posix_weekday_numbers() {
        use chrono::Datelike;
        let weekly = cron("0 7 * * 1");
        let zone = chrono_tz::Europe::Berlin;
        let slots = due_slots(
            &weekly,
            zone,
            utc("2026-10-01T00:00:00Z"),
            utc("2026-11-01T00:00:00Z"),
        );
        assert_eq!(slots.len(), 4);
        for slot in slots {
            let local = slot.with_timezone(&zone);
            assert_eq!(local.weekday(), chrono::Weekday::Mon, "{local}");
            assert_eq!(local.hour(), 7);
        }
        // 0 and 7 are both Sunday.
        for expr in ["0 7 * * 0", "0 7 * * 7"] {
            let slots = due_slots(
                &cron(expr),
                zone,
                utc("2026-11-01T12:00:00Z"),
                utc("2026-11-09T00:00:00Z"),
            );
            assert_eq!(slots.len(), 1, "{expr}");
            assert_eq!(
                slots[0].with_timezone(&zone).weekday(),
                chrono::Weekday::Sun
            );
        }
    }

    #[test]
    fn a_slot_in_the_spring_gap_fires_once_after_it_and_one_in_the_overlap_fires_once() {
        let zone = chrono_tz::America::New_York;
        // 02:30 does not exist on 2026-03-08 in New York.
        let gap = due_slots(
            &cron("30 2 * * *"),
            zone,
            utc("2026-03-07T12:00:00Z"),
            utc("2026-03-09T00:00:00Z"),
        );
        assert_eq!(gap.len(), 1, "{:?}", local_times(&gap, zone));
        let local = gap[0].with_timezone(&zone);
        assert_eq!(local.date_naive().to_string(), "2026-03-08");
        assert!(local.hour() == 3, "fires just after the gap: {local}");
        // 01:30 happens twice on 2026-11-01 in New York.
        let overlap = due_slots(
            &cron("30 1 * * *"),
            zone,
            utc("2026-10-31T12:00:00Z"),
            utc("2026-11-02T00:00:00Z"),
        );
        assert_eq!(overlap.len(), 1, "{:?}", local_times(&overlap, zone));
    }

    #[test]
    fn quiet_hours_hold_until_their_end_in_the_readers_zone() {
        let zone = chrono_tz::Europe::Berlin;
        let quiet = Some((22 * 60, 7 * 60));
        // 23:30 Berlin (22:30 UTC in winter) → 07:00 Berlin next day.
        let held = release_after_quiet_hours(utc("2026-11-27T22:30:00Z"), zone, quiet);
        assert_eq!(held, utc("2026-11-28T06:00:00Z"));
        // 05:00 Berlin → 07:00 the same day.
        let held = release_after_quiet_hours(utc("2026-11-28T04:00:00Z"), zone, quiet);
        assert_eq!(held, utc("2026-11-28T06:00:00Z"));
        // 12:00 Berlin → now.
        let now = utc("2026-11-28T11:00:00Z");
        assert_eq!(release_after_quiet_hours(now, zone, quiet), now);
        assert_eq!(release_after_quiet_hours(now, zone, None), now);
        // A window within one day: 12:30 UTC is 13:30 in Berlin, inside 13:00-14:00.
        let held =
            release_after_quiet_hours(utc("2026-11-28T12:30:00Z"), zone, Some((13 * 60, 14 * 60)));
        assert_eq!(held, utc("2026-11-28T13:00:00Z"));
        let free =
            release_after_quiet_hours(utc("2026-11-28T11:30:00Z"), zone, Some((13 * 60, 14 * 60)));
        assert_eq!(free, utc("2026-11-28T11:30:00Z"));
        let held = release_after_quiet_hours(
            utc("2026-11-28T12:30:00Z"),
            chrono_tz::UTC,
            Some((12 * 60, 14 * 60)),
        );
        assert_eq!(held, utc("2026-11-28T14:00:00Z"));
    }
}
