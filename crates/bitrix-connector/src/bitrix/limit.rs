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

    /// How long the caller must wait before its request fits; reserves the slot.
    fn reserve(&self) -> Duration {
        let mut s = self.inner.lock().expect("bucket lock");
        let now = Instant::now();
        let drained = now.duration_since(s.at).as_secs_f64() * self.drain_per_sec;
        s.level = (s.level - drained).max(0.0);
        s.at = now;
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
}
