//! A token bucket on the byte stream: smooth rate limiting shared by all workers of a client.
//! Each chunk takes its bytes from the bucket before it is written; when the bucket runs dry the
//! writer sleeps just long enough, so the rate is even rather than bursty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

pub struct RateLimiter {
    state: Mutex<Bucket>,
    /// No limit for now (a timetable's `off`): chunks pass without waiting.
    unlimited: AtomicBool,
}

struct Bucket {
    rate: f64,
    /// Tokens may go negative: a large chunk borrows and the next caller waits for the debt.
    tokens: f64,
    burst: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec`, allowing bursts of about 100 ms worth of bytes.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 10.0).max(64.0 * 1024.0);
        Self {
            state: Mutex::new(Bucket {
                rate,
                tokens: burst,
                burst,
                last: Instant::now(),
            }),
            unlimited: AtomicBool::new(false),
        }
    }

    /// A limiter that lets everything through until [`RateLimiter::set`] gives it a rate.
    pub fn unlimited() -> Self {
        let l = Self::new(1);
        l.unlimited.store(true, Ordering::Relaxed);
        l
    }

    /// Sets the rate, or lifts the limit (`None`); running copies follow from their next chunk.
    pub async fn set(&self, bytes_per_sec: Option<u64>) {
        match bytes_per_sec {
            None => self.unlimited.store(true, Ordering::Relaxed),
            Some(r) => {
                let was_unlimited = self.unlimited.swap(false, Ordering::Relaxed);
                self.set_rate(r).await;
                if was_unlimited {
                    // Start from a full burst, not from what accrued while unlimited.
                    let mut b = self.state.lock().await;
                    b.tokens = b.burst;
                    b.last = Instant::now();
                }
            }
        }
    }

    /// Changes the rate; takes effect for the next chunk.
    pub async fn set_rate(&self, bytes_per_sec: u64) {
        let mut b = self.state.lock().await;
        b.rate = bytes_per_sec.max(1) as f64;
        b.burst = (b.rate / 10.0).max(64.0 * 1024.0);
        b.tokens = b.tokens.min(b.burst);
    }

    /// Takes `n` bytes from the bucket, sleeping while it is in debt.
    pub async fn acquire(&self, n: u64) {
        if self.unlimited.load(Ordering::Relaxed) {
            return;
        }
        let wait = {
            let mut b = self.state.lock().await;
            let now = Instant::now();
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + elapsed * b.rate).min(b.burst);
            b.tokens -= n as f64;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / b.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_average_rate_follows_the_limit() {
        let l = RateLimiter::new(10 << 20);
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            l.acquire(1 << 20).await;
        }
        // 50 MiB at 10 MiB/s, less the initial burst of 1 MiB: about 4.9 s.
        let secs = start.elapsed().as_secs_f64();
        assert!((4.7..5.1).contains(&secs), "took {secs}s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_can_be_lifted_and_set_again() {
        let l = RateLimiter::new(10 << 20);
        l.set(None).await;
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            l.acquire(1 << 20).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.set(Some(10 << 20)).await;
        let start = tokio::time::Instant::now();
        for _ in 0..21 {
            l.acquire(1 << 20).await;
        }
        // 21 MiB at 10 MiB/s less the burst of 1 MiB: about 2 s.
        let secs = start.elapsed().as_secs_f64();
        assert!((1.9..2.1).contains(&secs), "took {secs}s");
        let u = RateLimiter::unlimited();
        u.acquire(u64::MAX >> 1).await;
        u.set(Some(1 << 20)).await;
        let start = tokio::time::Instant::now();
        u.acquire(2 << 20).await;
        assert!(start.elapsed() >= Duration::from_millis(1800));
    }
}
