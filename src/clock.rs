//! Clock helpers: Unix seconds now, a cheap millisecond clock, and Ollama's
//! RFC 3339 timestamps.
//!
//! OpenAI objects carry `created` as Unix seconds while Ollama writes
//! `created_at` as RFC 3339 with nanoseconds (`2026-11-24T17:15:24.097767Z`).
//! The conversion is small enough to do by hand (civil-from-days arithmetic)
//! instead of pulling in a date library.
//!
//! A request reads the time a dozen times; a precise read (`Instant::now`,
//! `SystemTime::now`) goes through the CPU's time-stamp counter and cost
//! about 100 ns each on the machines measured, 5 % of a tiny request's CPU.
//! Where a second or a few milliseconds are fine — today's date, expiry,
//! `created`, an idle connection's age — the kernel's coarse clocks are read
//! instead: a load from the page the kernel updates every tick (1–10 ms), a
//! few nanoseconds. Latencies and rate limits keep the precise clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock's reading since its epoch, or `None` if the kernel has no such clock.
fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid place for the kernel to write one timespec.
    let ok = unsafe { libc::clock_gettime(clock, &mut ts) } == 0;
    (ok && ts.tv_sec >= 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Seconds since the Unix epoch (from the coarse clock: at most a tick behind).
pub fn unix_now() -> i64 {
    match read_clock(libc::CLOCK_REALTIME_COARSE) {
        Some(d) => d.as_secs() as i64,
        None => unix_now_precise(),
    }
}

/// Seconds since the Unix epoch, from the precise clock: the plain version
/// of [`unix_now`].
pub fn unix_now_precise() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Milliseconds on a monotonic clock that may be a tick behind the precise
/// one (never goes back): for ages of the order of seconds.
pub fn coarse_ms() -> u64 {
    match read_clock(libc::CLOCK_MONOTONIC_COARSE) {
        Some(d) => d.as_millis() as u64,
        None => precise_ms(),
    }
}

/// Milliseconds on the precise monotonic clock: the plain version of [`coarse_ms`].
pub fn precise_ms() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC).unwrap_or_default().as_millis() as u64
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into Unix seconds.
pub fn rfc3339_to_unix(s: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')))
    };
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match s.get(i)? {
        b'Z' | b'z' if i + 1 == s.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == s.len() && s[i + 3] == b':' => {
            let off = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads an expiry: a duration from `now` (`90s`, `45m`, `12h`, `30d`, `2w`),
/// a date (`2026-12-31`, meaning 00:00 UTC that day) or an RFC 3339 time.
pub fn parse_expiry(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || format!("invalid expiry '{s}': use a duration like 30d, 12h or 90m, or a date like 2026-12-31");
    if let Some(unit) = s.chars().last().filter(|c| "smhdw".contains(*c)) {
        let n: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => 7 * 86_400,
        };
        return n.checked_mul(secs).and_then(|d| now.checked_add(d)).filter(|_| n > 0).ok_or_else(bad);
    }
    if s.len() == 10 {
        return rfc3339_to_unix(format!("{s}T00:00:00Z").as_bytes()).ok_or_else(bad);
    }
    rfc3339_to_unix(s.as_bytes()).ok_or_else(bad)
}

/// Formats Unix seconds as RFC 3339 with nanoseconds, as Ollama does.
pub fn unix_to_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Today (UTC) as `YYYY-MM-DD`; cached per thread for the second it was computed in.
pub fn today() -> std::rc::Rc<str> {
    thread_local! {
        static CACHE: std::cell::RefCell<(i64, std::rc::Rc<str>)> = std::cell::RefCell::new((i64::MIN, std::rc::Rc::from("")));
    }
    let now = crate::clock::unix_now();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now {
            *c = (now, std::rc::Rc::from(day_of(now)));
        }
        c.1.clone()
    })
}

/// The UTC day of a Unix time, as `YYYY-MM-DD`.
pub fn day_of(unix: i64) -> String {
    crate::clock::unix_to_rfc3339(unix, 0)[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_timestamps() {
        assert_eq!(rfc3339_to_unix(b"2025-11-24T17:15:24.097767Z"), Some(1_764_004_524));
        assert_eq!(rfc3339_to_unix(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_to_unix(b"2026-05-01T12:00:00.123+02:00"), Some(1_777_629_600));
        assert_eq!(rfc3339_to_unix(b"2026-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_to_unix(b"garbage"), None);
    }

    #[test]
    fn expiries_are_durations_dates_or_times() {
        let now = 1_000_000;
        assert_eq!(parse_expiry("30d", now), Ok(now + 30 * 86_400));
        assert_eq!(parse_expiry("12h", now), Ok(now + 12 * 3600));
        assert_eq!(parse_expiry("90m", now), Ok(now + 5400));
        assert_eq!(parse_expiry("2w", now), Ok(now + 14 * 86_400));
        assert_eq!(parse_expiry("2026-12-31", now), Ok(1_798_675_200));
        assert_eq!(parse_expiry("2026-12-31T12:00:00Z", now), Ok(1_798_675_200 + 43_200));
        for bad in ["", "30", "0d", "-3d", "tomorrow", "2026-13-01", "99999999999999999d"] {
            assert!(parse_expiry(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_and_parses_back() {
        for secs in [0, 1_764_004_524, 951_782_400, 4_102_444_800] {
            let s = unix_to_rfc3339(secs, 123);
            assert_eq!(rfc3339_to_unix(s.as_bytes()), Some(secs), "{s}");
        }
        assert_eq!(unix_to_rfc3339(1_764_004_524, 97_767_000), "2025-11-24T17:15:24.097767000Z");
    }

    #[test]
    fn the_coarse_clocks_follow_the_precise_ones_within_a_tick() {
        for _ in 0..1_000 {
            let (before, coarse, after) = (unix_now_precise(), unix_now(), unix_now_precise());
            assert!((before - 1..=after).contains(&coarse), "{before} {coarse} {after}");
            let (before, coarse, after) = (precise_ms(), coarse_ms(), precise_ms());
            assert!(before.saturating_sub(20) <= coarse && coarse <= after, "{before} {coarse} {after}");
        }
        let (first, mut last) = (coarse_ms(), coarse_ms());
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            let now = coarse_ms();
            assert!(now >= last, "monotonic");
            last = now;
        }
        assert!(last > first, "it moves");
    }
}
