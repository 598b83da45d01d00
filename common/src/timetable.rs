//! Speed limits that follow the clock: a plain rate (`50MiB/s`) or a timetable in the form of
//! rclone's `--bwlimit` (`08:00,20MiB/s 18:00,off`, `Mon-08:00,512KiB/s Sat-10:00,off`).
//!
//! A timetable is a list of entries `[DAY-]HH:MM[:SS],RATE` separated by spaces. An entry
//! without a day applies to every day; `RATE` is a rate such as `20MiB/s` or `off` (no limit).
//! The entry in force is the last one whose time is at or before now, going round the week: before
//! the first entry of the week, the last one of the week is in force. Times are UTC. Seconds are
//! an extension of rclone's form. A day's own entry replaces an every-day entry at the same time.

use std::fmt;

use crate::units::parse_rate;

const DAY_SECS: u32 = 86_400;
const WEEK_SECS: u32 = 7 * DAY_SECS;
/// Days as written, Monday first (the week of the timetable starts on Monday 00:00 UTC).
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// One entry of a timetable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The day (0 = Monday ... 6 = Sunday), or None for every day.
    pub day: Option<u8>,
    /// Seconds after midnight UTC.
    pub secs: u32,
    /// Bytes per second; None is `off`, no limit.
    pub rate: Option<u64>,
}

impl Entry {
    fn key(&self) -> (u8, u32) {
        (self.day.map_or(0, |d| d + 1), self.secs)
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.day {
            write!(f, "{}-", DAYS[d as usize])?;
        }
        let (h, m, s) = (self.secs / 3600, (self.secs / 60) % 60, self.secs % 60);
        write!(f, "{h:02}:{m:02}")?;
        if s != 0 {
            write!(f, ":{s:02}")?;
        }
        match self.rate {
            Some(r) => write!(f, ",{}", RateText(r)),
            None => write!(f, ",off"),
        }
    }
}

/// A rate written so that [`parse_rate`] reads the same number back: `20MiB/s`, `1500B/s`.
pub struct RateText(pub u64);

impl fmt::Display for RateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}/s", self.0 / size);
            }
        }
        write!(f, "{}B/s", self.0)
    }
}

/// The next change of a timetable: when, and the rate from then on (None: no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub at_ms: i64,
    pub rate: Option<u64>,
}

/// A bandwidth timetable: entries sorted (every-day entries first, then Monday ... Sunday, each by
/// time), at least one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timetable {
    entries: Vec<Entry>,
}

impl Timetable {
    /// Parses `08:00,20MiB/s 18:00,off`; the error names the first bad entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<(Entry, &str)> = Vec::new();
        for tok in text.split_whitespace() {
            let entry =
                parse_entry(tok).map_err(|e| format!("invalid timetable entry '{tok}': {e}"))?;
            if let Some((_, other)) = entries.iter().find(|(e, _)| e.key() == entry.key()) {
                return Err(format!(
                    "invalid timetable entry '{tok}': same time as '{other}'"
                ));
            }
            entries.push((entry, tok));
        }
        if entries.is_empty() {
            return Err(format!(
                "invalid timetable '{text}': expected entries such as '08:00,20MiB/s 18:00,off'"
            ));
        }
        let mut entries: Vec<Entry> = entries.into_iter().map(|(e, _)| e).collect();
        entries.sort_by_key(Entry::key);
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The week's change points in order: (seconds after Monday 00:00 UTC, rate). A day's own
    /// entry replaces the every-day entry at the same time.
    fn slots(&self) -> Vec<(u32, Option<u64>)> {
        let mut slots: Vec<(u32, Option<u64>)> = Vec::new();
        for e in self.entries.iter().filter(|e| e.day.is_none()) {
            slots.extend((0..7).map(|d| (d * DAY_SECS + e.secs, e.rate)));
        }
        for e in self.entries.iter().filter(|e| e.day.is_some()) {
            let at = e.day.unwrap_or(0) as u32 * DAY_SECS + e.secs;
            slots.retain(|(s, _)| *s != at);
            slots.push((at, e.rate));
        }
        slots.sort_by_key(|(s, _)| *s);
        slots
    }

    /// The rate in force at `now_ms` (None: no limit) and the next change to another rate, if the
    /// timetable has more than one rate.
    pub fn at(&self, now_ms: i64) -> (Option<u64>, Option<Change>) {
        let slots = self.slots();
        let week_ms = WEEK_SECS as i64 * 1000;
        // 1970-01-01 was a Thursday: the Monday before is 3 days earlier.
        let into_week = (now_ms + 3 * DAY_SECS as i64 * 1000).rem_euclid(week_ms);
        let week_start = now_ms - into_week;
        let current = slots
            .iter()
            .rposition(|(s, _)| (*s as i64) * 1000 <= into_week)
            .unwrap_or(slots.len() - 1);
        let rate = slots[current].1;
        let next = (1..slots.len()).find_map(|k| {
            let i = (current + k) % slots.len();
            let (s, r) = slots[i];
            if r == rate {
                return None;
            }
            let mut at = week_start + s as i64 * 1000;
            if at <= now_ms {
                at += week_ms;
            }
            Some(Change { at_ms: at, rate: r })
        });
        (rate, next)
    }

    /// The same timetable with no entry above `cap` (`off` becomes `cap`).
    pub fn capped(&self, cap: u64) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .map(|e| Entry {
                    rate: Some(e.rate.map_or(cap, |r| r.min(cap))),
                    ..*e
                })
                .collect(),
        }
    }
}

impl fmt::Display for Timetable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn parse_entry(tok: &str) -> Result<Entry, String> {
    let (when, rate) = tok
        .split_once(',')
        .ok_or("expected TIME,RATE such as 08:00,20MiB/s or Mon-08:00,off")?;
    if rate.contains(',') {
        return Err("expected one comma, between the time and the rate".into());
    }
    let (day, time) = match when.split_once('-') {
        Some((d, t)) => (Some(parse_day(d)?), t),
        None => (None, when),
    };
    let secs = parse_time(time)?;
    let rate = if rate.eq_ignore_ascii_case("off") {
        None
    } else {
        Some(parse_rate(rate)?)
    };
    Ok(Entry { day, secs, rate })
}

fn parse_day(d: &str) -> Result<u8, String> {
    let l = d.to_ascii_lowercase();
    (0..7u8)
        .find(|&i| l == DAYS[i as usize].to_ascii_lowercase() || l == DAY_NAMES[i as usize])
        .ok_or_else(|| format!("unknown day '{d}' (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

/// `HH:MM` or `HH:MM:SS`, two digits each.
fn parse_time(t: &str) -> Result<u32, String> {
    let parts: Vec<&str> = t.split(':').collect();
    let bad = || format!("invalid time '{t}': expected HH:MM or HH:MM:SS");
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(99)).collect();
    let (h, m, s) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    if h > 23 {
        return Err(format!("invalid time '{t}': hour must be 00 to 23"));
    }
    if m > 59 || s > 59 {
        return Err(format!(
            "invalid time '{t}': minutes and seconds must be 00 to 59"
        ));
    }
    Ok(h * 3600 + m * 60 + s)
}

/// `ms` as a day and time of the week in UTC: `Thu 18:00:00`.
pub fn week_clock(ms: i64) -> String {
    let into_week = (ms + 3 * DAY_SECS as i64 * 1000).rem_euclid(WEEK_SECS as i64 * 1000) / 1000;
    let (day, secs) = (into_week / DAY_SECS as i64, into_week % DAY_SECS as i64);
    format!(
        "{} {:02}:{:02}:{:02}",
        DAYS[day as usize],
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A task's speed limit: a rate, or a timetable. A rate is stored and sent as a number (bytes per
/// second), a timetable as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpeedLimit {
    Rate(u64),
    Timetable(Timetable),
}

impl SpeedLimit {
    /// A rate (`50MiB/s`) when the text has no comma, else a timetable.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains(',') {
            Timetable::parse(text).map(SpeedLimit::Timetable)
        } else {
            parse_rate(text).map(SpeedLimit::Rate)
        }
    }

    /// The rate in force at `now_ms` (None: no limit now).
    pub fn now(&self, now_ms: i64) -> Option<u64> {
        self.at(now_ms).0
    }

    /// The rate in force at `now_ms` and the next change (never for a plain rate).
    pub fn at(&self, now_ms: i64) -> (Option<u64>, Option<Change>) {
        match self {
            SpeedLimit::Rate(r) => (Some(*r), None),
            SpeedLimit::Timetable(t) => t.at(now_ms),
        }
    }

    /// The limit with nothing above `cap`, at any time.
    pub fn capped(&self, cap: u64) -> Self {
        match self {
            SpeedLimit::Rate(r) => SpeedLimit::Rate((*r).min(cap)),
            SpeedLimit::Timetable(t) => SpeedLimit::Timetable(t.capped(cap)),
        }
    }

    /// A rate of zero, or a timetable entry of zero (refused by validation).
    pub fn has_zero(&self) -> bool {
        match self {
            SpeedLimit::Rate(r) => *r == 0,
            SpeedLimit::Timetable(t) => t.entries.iter().any(|e| e.rate == Some(0)),
        }
    }
}

impl From<u64> for SpeedLimit {
    fn from(r: u64) -> Self {
        SpeedLimit::Rate(r)
    }
}

impl fmt::Display for SpeedLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpeedLimit::Rate(r) => write!(f, "{}", RateText(*r)),
            SpeedLimit::Timetable(t) => write!(f, "{t}"),
        }
    }
}

impl serde::Serialize for SpeedLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SpeedLimit::Rate(r) => s.serialize_u64(*r),
            SpeedLimit::Timetable(t) => s.collect_str(t),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

impl<'de> serde::Deserialize<'de> for SpeedLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(SpeedLimit::Rate(n)),
            NumberOrText::Text(t) => SpeedLimit::parse(&t)
                .map_err(|e| serde::de::Error::custom(format!("speed_limit: {e}"))),
        }
    }
}

/// Serde: a required, nullable speed limit (`task.set` must say what it sets).
pub fn de_required<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SpeedLimit>, D::Error> {
    <Option<SpeedLimit> as serde::Deserialize>::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of `day` (0 = Monday) `hh:mm:ss` UTC in the week of Monday 2026-11-30.
    fn at(day: i64, h: i64, m: i64, s: i64) -> i64 {
        // 2026-11-30 00:00:00 UTC, a Monday.
        const MONDAY: i64 = 1_795_996_800_000;
        MONDAY + ((day * 24 + h) * 3600 + m * 60 + s) * 1000
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        // 1970-01-05 was a Monday: 2026-11-30 is a whole number of weeks after it.
        assert_eq!((at(0, 0, 0, 0) / 86_400_000 - 4) % 7, 0);
    }

    #[test]
    fn timetables_parse_sort_and_print_in_one_form() {
        let t = Timetable::parse("18:00,off  08:00,20MiB/s").unwrap();
        assert_eq!(t.to_string(), "08:00,20MiB/s 18:00,off");
        let t = Timetable::parse("sat-10:00,off Mon-08:00:30,512KiB/s 07:00,1500B/s").unwrap();
        assert_eq!(
            t.to_string(),
            "07:00,1500B/s Mon-08:00:30,512KiB/s Sat-10:00,off"
        );
        assert_eq!(
            t.entries()[1],
            Entry {
                day: Some(0),
                secs: 8 * 3600 + 30,
                rate: Some(512 << 10)
            }
        );
        let t = Timetable::parse("Sunday-23:59,1GB/s").unwrap();
        assert_eq!(t.to_string(), "Sun-23:59,1000000000B/s");
        assert_eq!(Timetable::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn bad_entries_are_named_in_one_line() {
        let cases = [
            (
                "08:00,20MiB/s 25:00,off",
                "'25:00,off': invalid time '25:00': hour",
            ),
            ("08:00,20MiB/s 18:60,off", "'18:60,off'"),
            ("8:00,20MiB/s", "'8:00,20MiB/s': invalid time '8:00'"),
            ("08:00:5,off", "'08:00:5,off'"),
            ("08:00,20MiB/s 18:00", "'18:00': expected TIME,RATE"),
            ("Mo-08:00,off", "unknown day 'Mo'"),
            ("08:00,fast", "'08:00,fast': invalid rate 'fast'"),
            ("08:00,20MiB", "per second"),
            ("08:00,0MiB/s", "greater than zero"),
            ("08:00,1MiB/s,2MiB/s", "one comma"),
            (
                "08:00,1MiB/s 08:00,off",
                "'08:00,off': same time as '08:00,1MiB/s'",
            ),
            ("Mon-08:00,1MiB/s mon-08:00,off", "same time as"),
            ("Mon-,off", "invalid time ''"),
        ];
        for (text, want) in cases {
            let e = SpeedLimit::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.starts_with("invalid"), "{text}: {e}");
            assert!(!e.contains('\n'));
        }
        assert!(Timetable::parse("  ")
            .unwrap_err()
            .contains("expected entries"));
    }

    #[test]
    fn a_plain_rate_stays_a_rate_and_a_number_on_the_wire() {
        assert_eq!(
            SpeedLimit::parse("50MiB/s").unwrap(),
            SpeedLimit::Rate(50 << 20)
        );
        assert_eq!(
            SpeedLimit::parse("2 KiB/s").unwrap(),
            SpeedLimit::Rate(2048)
        );
        assert_eq!(
            SpeedLimit::parse("fast").unwrap_err(),
            parse_rate("fast").unwrap_err()
        );
        let r: SpeedLimit = serde_json::from_str("52428800").unwrap();
        assert_eq!(r, SpeedLimit::Rate(50 << 20));
        assert_eq!(serde_json::to_string(&r).unwrap(), "52428800");
        let t: SpeedLimit = serde_json::from_str(r#""18:00,off 08:00,20MiB/s""#).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#""08:00,20MiB/s 18:00,off""#
        );
        let e = serde_json::from_str::<SpeedLimit>(r#""08:00,x""#).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("speed_limit: invalid timetable entry '08:00,x'"));
    }

    #[test]
    fn the_entry_in_force_is_the_last_one_not_after_now_across_midnight() {
        let t = SpeedLimit::parse("08:00,20MiB/s 18:00,off").unwrap();
        // Before 08:00 the previous day's 18:00 entry is in force.
        assert_eq!(
            t.at(at(2, 7, 59, 59)),
            (
                None,
                Some(Change {
                    at_ms: at(2, 8, 0, 0),
                    rate: Some(20 << 20)
                })
            )
        );
        // At 08:00 exactly the 08:00 entry is in force.
        assert_eq!(
            t.at(at(2, 8, 0, 0)),
            (
                Some(20 << 20),
                Some(Change {
                    at_ms: at(2, 18, 0, 0),
                    rate: None
                })
            )
        );
        // Late in the evening: off, and 20 MiB/s from 08:00 the next morning.
        assert_eq!(
            t.at(at(2, 23, 30, 0)),
            (
                None,
                Some(Change {
                    at_ms: at(3, 8, 0, 0),
                    rate: Some(20 << 20)
                })
            )
        );
        // Sunday night wraps to Monday morning.
        assert_eq!(t.at(at(6, 23, 0, 0)).1.unwrap().at_ms, at(7, 8, 0, 0));
        // Seconds count.
        let s = SpeedLimit::parse("10:00:15,5MiB/s 10:00:30,20MiB/s").unwrap();
        assert_eq!(s.now(at(4, 10, 0, 14)), Some(20 << 20));
        assert_eq!(s.now(at(4, 10, 0, 15)), Some(5 << 20));
        assert_eq!(s.now(at(4, 10, 0, 29)), Some(5 << 20));
        assert_eq!(s.now(at(4, 10, 0, 30)), Some(20 << 20));
        assert_eq!(s.at(at(4, 10, 0, 29)).1.unwrap().at_ms, at(4, 10, 0, 30));
    }

    #[test]
    fn weekday_entries_wrap_around_the_week() {
        let t = SpeedLimit::parse("Mon-08:00,512KiB/s Sat-10:00,off").unwrap();
        // Monday before 08:00: Saturday's entry of the week before is still in force.
        assert_eq!(
            t.at(at(0, 7, 0, 0)),
            (
                None,
                Some(Change {
                    at_ms: at(0, 8, 0, 0),
                    rate: Some(512 << 10)
                })
            )
        );
        // Wednesday: Monday's entry, until Saturday 10:00.
        assert_eq!(
            t.at(at(2, 12, 0, 0)),
            (
                Some(512 << 10),
                Some(Change {
                    at_ms: at(5, 10, 0, 0),
                    rate: None
                })
            )
        );
        // Sunday: off, until next Monday 08:00.
        assert_eq!(t.at(at(6, 12, 0, 0)).1.unwrap().at_ms, at(7, 8, 0, 0));
        // A single weekday entry is in force all week, and nothing ever changes.
        let one = SpeedLimit::parse("Wed-12:00,1MiB/s").unwrap();
        assert_eq!(one.at(at(0, 0, 0, 0)), (Some(1 << 20), None));
        // A plain rate never changes.
        assert_eq!(SpeedLimit::Rate(7).at(at(3, 3, 3, 3)), (Some(7), None));
    }

    #[test]
    fn a_day_entry_replaces_the_every_day_entry_at_its_time() {
        let t = SpeedLimit::parse("08:00,20MiB/s 18:00,off Sat-08:00,off").unwrap();
        assert_eq!(t.now(at(4, 9, 0, 0)), Some(20 << 20));
        assert_eq!(t.now(at(5, 9, 0, 0)), None);
        // Friday 18:00 is off through Saturday to Sunday 08:00.
        assert_eq!(
            t.at(at(4, 19, 0, 0)).1,
            Some(Change {
                at_ms: at(6, 8, 0, 0),
                rate: Some(20 << 20)
            })
        );
        // Entries of the same rate in a row are no change.
        let same = SpeedLimit::parse("08:00,1MiB/s 12:00,1MiB/s 18:00,off").unwrap();
        assert_eq!(same.at(at(1, 9, 0, 0)).1.unwrap().at_ms, at(1, 18, 0, 0));
    }

    #[test]
    fn week_clocks_name_the_day_and_time() {
        assert_eq!(week_clock(at(3, 18, 0, 5)), "Thu 18:00:05");
        assert_eq!(week_clock(at(6, 23, 59, 59)), "Sun 23:59:59");
        assert_eq!(week_clock(0), "Thu 00:00:00");
    }

    #[test]
    fn a_cap_lowers_every_entry_and_replaces_off() {
        let t = SpeedLimit::parse("08:00,20MiB/s 12:00,1MiB/s 18:00,off").unwrap();
        assert_eq!(
            t.capped(5 << 20).to_string(),
            "08:00,5MiB/s 12:00,1MiB/s 18:00,5MiB/s"
        );
        assert_eq!(SpeedLimit::Rate(9).capped(5), SpeedLimit::Rate(5));
        assert!(SpeedLimit::Rate(0).has_zero());
        assert!(!t.has_zero());
    }
}
