//! Live speed of each task: bytes and files copied over a sliding window, from applied results.
//! Kept in memory (a restarted server starts a new window); the peak is persisted in the store.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Length of the sliding window.
pub const WINDOW_MS: i64 = 10_000;

#[derive(Default)]
pub struct SpeedTracker {
    tasks: Mutex<HashMap<String, VecDeque<Sample>>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at_ms: i64,
    bytes: u64,
    files: u64,
}

/// Current speed of a task.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Speed {
    pub bytes_per_sec: f64,
    pub files_per_sec: f64,
}

impl SpeedTracker {
    /// Records `bytes` and `files` copied for `task` at `now_ms`.
    pub fn record(&self, task: &str, now_ms: i64, bytes: u64, files: u64) {
        let mut tasks = self.tasks.lock().expect("speed lock");
        let q = tasks.entry(task.to_string()).or_default();
        q.push_back(Sample {
            at_ms: now_ms,
            bytes,
            files,
        });
        while q.front().is_some_and(|s| s.at_ms < now_ms - WINDOW_MS) {
            q.pop_front();
        }
    }

    /// Speed over the window ending at `now_ms`; `started_ms` shortens the window of a young task.
    pub fn speed(&self, task: &str, now_ms: i64, started_ms: i64) -> Speed {
        let tasks = self.tasks.lock().expect("speed lock");
        let Some(q) = tasks.get(task) else {
            return Speed::default();
        };
        let from = now_ms - WINDOW_MS;
        let (bytes, files) = q
            .iter()
            .filter(|s| s.at_ms >= from)
            .fold((0u64, 0u64), |(b, f), s| (b + s.bytes, f + s.files));
        // A young task is measured over its age (at least 250 ms, so one result is no spike).
        let window_s = ((now_ms - from.max(started_ms)).max(250)) as f64 / 1000.0;
        Speed {
            bytes_per_sec: bytes as f64 / window_s,
            files_per_sec: files as f64 / window_s,
        }
    }

    /// Forgets a task (finished, cancelled or deleted).
    pub fn forget(&self, task: &str) {
        self.tasks.lock().expect("speed lock").remove(task);
    }

    /// Forgets every key with nothing recorded for `idle_ms` before `now_ms` (the per-client
    /// trackers: a client id never seen again is not kept forever); how many.
    pub fn forget_idle(&self, now_ms: i64, idle_ms: i64) -> usize {
        let mut tasks = self.tasks.lock().expect("speed lock");
        let before = tasks.len();
        tasks.retain(|_, q| q.back().is_some_and(|s| now_ms - s.at_ms < idle_ms));
        before - tasks.len()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.tasks.lock().expect("speed lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_is_the_window_average_and_old_samples_fall_out() {
        let t = SpeedTracker::default();
        for i in 0..10 {
            t.record("a", i * 1000, 1_000_000, 10);
        }
        let s = t.speed("a", 10_000, 0);
        assert!((s.bytes_per_sec - 1_000_000.0).abs() < 1.0, "{s:?}");
        assert!((s.files_per_sec - 10.0).abs() < 0.01);
        // A young task is measured over its own age, not the full window.
        let s = t.speed("a", 10_000, 8_000);
        assert!(s.bytes_per_sec > 1_000_000.0);
        assert_eq!(t.speed("a", 100_000, 0), Speed::default());
        assert_eq!(t.speed("other", 1, 0), Speed::default());
    }

    #[test]
    fn keys_idle_for_the_given_time_are_forgotten() {
        let t = SpeedTracker::default();
        for i in 0..500 {
            t.record(&format!("acme/c{i}"), 1_000, 10, 1);
        }
        t.record("acme/busy", 600_000, 10, 1);
        assert_eq!(t.forget_idle(600_999, 600_000), 0);
        assert_eq!(t.forget_idle(601_000, 600_000), 500);
        assert_eq!(t.len(), 1);
        assert!(t.speed("acme/busy", 600_000, 0).bytes_per_sec > 0.0);
    }
}
