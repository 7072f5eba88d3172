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

    /// `enter` for a unit that ends before the counter can: no count of
    /// references to the counter is taken (two atomic updates fewer on a
    /// value every request on every thread touches).
    pub fn enter_scoped(&self) -> ScopedGuard<'_> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ScopedGuard(&self.0)
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts one unit in flight for as long as it lives; see
/// [`InFlight::enter_scoped`].
pub struct ScopedGuard<'a>(&'a AtomicUsize);

impl Drop for ScopedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}
