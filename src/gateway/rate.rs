//! A token bucket per connection for client frames (`CLIENT_MSG_RATE`, `CLIENT_MSG_BURST`):
//! small (12 bytes, no allocation) because every connection carries one.

use tokio::time::Instant;

/// Tokens refill at `rate` per second up to `burst`; each frame takes one.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Tokens left, in thousandths (integer arithmetic, no float drift).
    milli_tokens: u32,
    /// When the bucket was last refilled.
    at: Instant,
}

/// The bucket's settings, shared by every connection of a node.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Frames per second, in thousandths; 0: no limit.
    pub milli_per_sec: u32,
    /// Most frames in a burst.
    pub burst: u32,
}

impl Rate {
    /// `per_sec` frames a second (0: no limit), `burst` at once.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Self {
            milli_per_sec: (per_sec * 1000.0).clamp(0.0, u32::MAX as f64) as u32,
            burst: burst.max(1),
        }
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            milli_tokens: rate.burst.saturating_mul(1000),
            at: now,
        }
    }

    /// Takes a token for one frame; false when the client exceeded its rate.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        if rate.milli_per_sec == 0 {
            return true;
        }
        let elapsed_ms = now.saturating_duration_since(self.at).as_millis() as u64;
        let refill = elapsed_ms * rate.milli_per_sec as u64 / 1000;
        let cap = rate.burst as u64 * 1000;
        let tokens = (self.milli_tokens as u64 + refill).min(cap);
        // Only whole milliseconds are consumed, so slow trickles still refill.
        self.at += std::time::Duration::from_millis(elapsed_ms);
        if tokens < 1000 {
            self.milli_tokens = tokens as u32;
            return false;
        }
        self.milli_tokens = (tokens - 1000) as u32;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Invariant: a burst of `burst` frames passes, the next does not, and the bucket refills
    /// at the rate; no limit when the rate is 0.
    #[test]
    fn bursts_pass_then_the_rate_holds() {
        let rate = Rate::new(10.0, 20);
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate, start);
        assert!((0..20).all(|_| bucket.take(rate, start)));
        assert!(!bucket.take(rate, start));
        // 100 ms at 10/s: one more frame.
        let later = start + Duration::from_millis(100);
        assert!(bucket.take(rate, later));
        assert!(!bucket.take(rate, later));
        // A long pause refills up to the burst, no further.
        let much_later = later + Duration::from_secs(60);
        assert!((0..20).all(|_| bucket.take(rate, much_later)));
        assert!(!bucket.take(rate, much_later));
        let unlimited = Rate::new(0.0, 1);
        let mut free = TokenBucket::new(unlimited, start);
        assert!((0..10_000).all(|_| free.take(unlimited, start)));
    }
}
