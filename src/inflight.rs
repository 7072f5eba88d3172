//! Counting work in flight: requests (shutdown waits for them) and chats
//! (the global cap). One counter type, one guard.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// Counts one unit in flight for as long as it lives.
pub struct InflightGuard {
    counter: Arc<AtomicUsize>,
    /// The count right after this one entered.
    pub position: usize,
}

impl InFlight {
    pub fn enter(&self) -> InflightGuard {
        let position = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        InflightGuard {
            counter: self.0.clone(),
            position,
        }
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}
