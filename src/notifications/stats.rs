//! Delivery and engagement per event type (`GET /api/admin/tenants/{t}/notifications/stats`):
//! published, connections reached, users who read, and the median time to read, over the last
//! days. Counted per day of publish, so a window is a sum of days.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::protocol::EventType;

/// Time-to-read samples kept per day and type at most (the newest).
pub const MAX_SAMPLES: usize = 1000;
/// Reads a read-all records for the stats at most (the newest it read).
pub const READ_ALL_SAMPLES: usize = 200;
/// Longest window a stats request may ask for, in days.
pub const MAX_DAYS: u32 = 366;

/// One type's figures over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStats {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Notifications published.
    pub published: u64,
    /// Connections they reached (summed over nodes, reported every few seconds).
    pub delivered: u64,
    /// Distinct users who marked at least one of them read (approximate on Redis: HyperLogLog).
    pub read_by: u64,
    /// Median seconds from publish to an explicit read, over the sampled reads.
    pub median_seconds_to_read: Option<f64>,
}

/// The day number (days since the Unix epoch, UTC) of a millisecond time.
pub fn day_of(ms: u64) -> u64 {
    ms / 86_400_000
}

/// The median of samples, `None` for none.
pub fn median(samples: &mut [u64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let mid = samples.len() / 2;
    Some(if samples.len() % 2 == 1 {
        samples[mid] as f64
    } else {
        (samples[mid - 1] + samples[mid]) as f64 / 2.0
    })
}

/// One day's figures of one type, kept in memory (the embedded engine).
#[derive(Debug, Default, Clone)]
pub struct DayStats {
    /// Notifications published.
    pub published: u64,
    /// Connections reached.
    pub delivered: u64,
    /// Users who read one.
    pub readers: HashSet<String>,
    /// Seconds to read, newest last, at most [`MAX_SAMPLES`].
    pub seconds_to_read: Vec<u64>,
}

impl DayStats {
    /// Records one explicit read by `user`, `seconds` after publish.
    pub fn read(&mut self, user: &str, seconds: u64) {
        if !self.readers.contains(user) {
            self.readers.insert(user.to_owned());
        }
        if self.seconds_to_read.len() >= MAX_SAMPLES {
            self.seconds_to_read.remove(0);
        }
        self.seconds_to_read.push(seconds);
    }
}

/// Sums days into one [`TypeStats`] per type that has any figure, in the documented order.
pub fn summarize<'a>(days: impl Iterator<Item = (EventType, &'a DayStats)>) -> Vec<TypeStats> {
    #[derive(Default)]
    struct Sum<'a> {
        published: u64,
        delivered: u64,
        readers: HashSet<&'a str>,
        samples: Vec<u64>,
    }
    let mut per_type: BTreeMap<EventType, Sum<'a>> = BTreeMap::new();
    for (t, day) in days {
        let sum = per_type.entry(t).or_default();
        sum.published += day.published;
        sum.delivered += day.delivered;
        sum.readers.extend(day.readers.iter().map(String::as_str));
        sum.samples.extend_from_slice(&day.seconds_to_read);
    }
    per_type
        .into_iter()
        .map(|(t, mut sum)| TypeStats {
            event_type: t,
            published: sum.published,
            delivered: sum.delivered,
            read_by: sum.readers.len() as u64,
            median_seconds_to_read: median(&mut sum.samples),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_sums() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5, 1, 3]), Some(3.0));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2.5));
        let mut a = DayStats {
            published: 2,
            delivered: 10,
            ..Default::default()
        };
        a.read("u1", 4);
        let mut b = DayStats {
            published: 1,
            ..Default::default()
        };
        b.read("u1", 10);
        b.read("u2", 6);
        let out = summarize(
            [
                (EventType::LicenseUpdated, &a),
                (EventType::LicenseExpired, &b),
                (EventType::LicenseUpdated, &b),
            ]
            .into_iter(),
        );
        assert_eq!(out[0].event_type, EventType::LicenseExpired);
        assert_eq!(out[1].published, 3);
        assert_eq!(out[1].delivered, 10);
        assert_eq!(out[1].read_by, 2);
        assert_eq!(out[1].median_seconds_to_read, Some(6.0));
    }
}
