//! When a failed delivery is tried again: the schedule (`DELIVERY_RETRY_SCHEDULE`, default
//! 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h) with ±20 % jitter, so that many deliveries
//! failing together do not come back together.

use std::time::Duration;

use rand::Rng;

/// The documented schedule, in seconds.
pub const DEFAULT_SCHEDULE: [u64; 8] = [5, 30, 120, 600, 1800, 3600, 10_800, 21_600];

/// Delays before each retry; after the last, a delivery has failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule(pub Vec<Duration>);

impl Default for Schedule {
    fn default() -> Self {
        Self(
            DEFAULT_SCHEDULE
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
        )
    }
}

impl Schedule {
    /// Parses a comma list of seconds (fractions allowed), 1–20 of them, each 0.01 s – 7 days.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|d| (0.01..=604_800.0).contains(d))
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("{s:?} is not a delay of 0.01–604800 seconds"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 20 {
            return Err("between 1 and 20 delays".into());
        }
        Ok(Self(delays))
    }

    /// How long after failed attempt number `attempt` (1-based) the next one runs, jittered;
    /// `None` when that was the last.
    pub fn after(&self, attempt: u32) -> Option<Duration> {
        let base = *self.0.get(attempt.checked_sub(1)? as usize)?;
        let factor = rand::rng().random_range(0.8..1.2);
        Some(base.mul_f64(factor))
    }

    /// Attempts in all: the first and one per delay.
    pub fn attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_backs_off_with_jitter_and_ends() {
        let s = Schedule::default();
        assert_eq!(s.attempts(), 9);
        let first = s.after(1).unwrap();
        assert!(
            first >= Duration::from_secs(4) && first <= Duration::from_secs(6),
            "{first:?}"
        );
        let last = s.after(8).unwrap();
        assert!(last >= Duration::from_secs(17_280) && last <= Duration::from_secs(25_920));
        assert_eq!(s.after(9), None);
        assert_eq!(s.after(0), None);
        assert_eq!(Schedule::parse("0.5, 1").unwrap().attempts(), 3);
        for bad in ["", "x", "0", "1,,2", "999999999"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
