//! Client-side leaky bucket matching Bitrix's own (protocol §3: a non-Enterprise portal drains
//! 2 requests/s and blocks above 50 queued). Staying under it keeps the portal from answering
//! `QUERY_LIMIT_EXCEEDED` in the first place; when it still does, the bucket is filled so the
//! next calls slow down.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Clone)]
pub struct Bucket {
    inner: Arc<Mutex<State>>,
    drain_per_sec: f64,
    /// Below Bitrix's 50 so that another client of the same portal leaves us some room.
    capacity: f64,
}

struct State {
    level: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new(2.0, 40.0)
    }
}

impl Bucket {
    pub fn new(drain_per_sec: f64, capacity: f64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                level: 0.0,
                at: Instant::now(),
            })),
            drain_per_sec,
            capacity,
        }
    }

    /// The level now, after draining since the last look.
    fn drained(&self, s: &mut State) -> f64 {
        let now = Instant::now();
        let drained = now.duration_since(s.at).as_secs_f64() * self.drain_per_sec;
        s.level = (s.level - drained).max(0.0);
        s.at = now;
        s.level
    }

    /// Takes a slot if one is free now; otherwise how long until one is, taking nothing. For
    /// callers that would rather come back later than wait here.
    pub fn try_reserve(&self) -> Result<(), Duration> {
        let mut s = self.inner.lock().expect("bucket lock");
        let level = self.drained(&mut s);
        if level + 1.0 <= self.capacity {
            s.level += 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (level + 1.0 - self.capacity) / self.drain_per_sec,
            ))
        }
    }

    /// How long until a slot is free, taking nothing.
    pub fn time_to_slot(&self) -> Duration {
        let mut s = self.inner.lock().expect("bucket lock");
        let over = self.drained(&mut s) + 1.0 - self.capacity;
        Duration::from_secs_f64(over.max(0.0) / self.drain_per_sec)
    }

    /// One slot's worth of draining: how often a slot frees up once the bucket is full.
    pub fn slot_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.drain_per_sec)
    }

    /// How full the bucket is, from 0 (every slot free) to 1.
    pub fn fullness(&self) -> f64 {
        let mut s = self.inner.lock().expect("bucket lock");
        (self.drained(&mut s) / self.capacity).min(1.0)
    }

    /// How long the caller must wait before its request fits; reserves the slot.
    fn reserve(&self) -> Duration {
        let mut s = self.inner.lock().expect("bucket lock");
        self.drained(&mut s);
        s.level += 1.0;
        let over = s.level - self.capacity;
        if over <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(over / self.drain_per_sec)
        }
    }

    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The portal said we are over its limit: behave as if the bucket were full.
    pub fn saturate(&self) {
        let mut s = self.inner.lock().expect("bucket lock");
        s.level = s.level.max(self.capacity);
        s.at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_drains_at_the_rate() {
        let b = Bucket::new(2.0, 3.0);
        assert!(b.reserve().is_zero());
        assert!(b.reserve().is_zero());
        assert!(b.reserve().is_zero());
        let wait = b.reserve();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        b.saturate();
        assert!(b.reserve() >= Duration::from_millis(400));
    }

    #[test]
    fn try_reserve_takes_nothing_when_full() {
        let b = Bucket::new(2.0, 2.0);
        assert_eq!(b.try_reserve(), Ok(()));
        assert_eq!(b.try_reserve(), Ok(()));
        assert!((b.fullness() - 1.0).abs() < 0.01);
        let wait = b.try_reserve().unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Refused callers left the level alone: the wait did not grow.
        let again = b.try_reserve().unwrap_err();
        assert!(again <= wait);
    }
}
