//! The keep-alive bound of an HTTP/1 connection: how long it may wait for
//! its next request. One timer per connection, armed once and re-armed only
//! when it fires, instead of one timer per wait: registering a timer and
//! dropping it unfired cost every request about 900 instructions (a clock
//! read, a lookup in Pingora's timer tree, two `Arc`s, a box and a waiter
//! added to and removed from a `Notify`), where polling an armed one costs
//! a few dozen.
//!
//! The timer keeps running while the connection serves a request. When it
//! fires then, it wakes the connection's task once for nothing; the next
//! wait finds it fired and arms it again for what is left of its own period.
//! So a connection is closed when one wait has lasted the whole period, as
//! with a timer per wait, never earlier.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use pingora::prelude::fast_timeout::fast_sleep;

type Timer = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

pub struct IdleBound {
    period: Duration,
    timer: Option<Timer>,
}

impl IdleBound {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            timer: None,
        }
    }

    /// What `wait` gives, or `None` when it gives nothing for the period.
    pub async fn within<F: Future>(&mut self, wait: F) -> Option<F::Output> {
        let started = Instant::now();
        let period = self.period;
        let mut wait = std::pin::pin!(wait);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = wait.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            loop {
                // Pingora's timer: its clock thread fires it, so an armed
                // one costs the worker nothing until then (tokio's wheel
                // would be turned on every park).
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(fast_sleep(period)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Armed during an earlier wait, or for this one.
                let waited = started.elapsed();
                if waited >= period {
                    self.timer = None;
                    return Poll::Ready(None);
                }
                self.timer = Some(Box::pin(fast_sleep(period - waited)));
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait that is pending once, so that it arms the timer, then ready.
    fn ready_on_second_poll() -> impl Future<Output = ()> {
        let mut polled = false;
        std::future::poll_fn(move |cx| {
            if polled {
                Poll::Ready(())
            } else {
                polled = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }

    #[tokio::test]
    async fn a_wait_that_outlasts_the_period_gives_none() {
        let mut idle = IdleBound::new(Duration::from_millis(100));
        let started = Instant::now();
        let got = idle.within(std::future::pending::<()>()).await;
        assert_eq!(got, None);
        // Pingora's timer has 10 ms steps.
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test]
    async fn a_ready_wait_gives_its_output() {
        let mut idle = IdleBound::new(Duration::from_millis(100));
        assert_eq!(idle.within(async { 7 }).await, Some(7));
    }

    /// The timer armed in an early wait fires during a later one: that wait
    /// gets the rest of its own period, not the rest of the first wait's.
    #[tokio::test]
    async fn each_wait_gets_the_whole_period() {
        let period = Duration::from_millis(300);
        let mut idle = IdleBound::new(period);
        assert_eq!(idle.within(ready_on_second_poll()).await, Some(()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The timer fires about 100 ms into this wait, which must go on.
        let started = Instant::now();
        let quick = tokio::time::sleep(Duration::from_millis(200));
        assert_eq!(idle.within(quick).await, Some(()));
        assert!(started.elapsed() >= Duration::from_millis(190));
        // And a silent wait still ends after its own whole period.
        let started = Instant::now();
        assert_eq!(idle.within(std::future::pending::<()>()).await, None);
        assert!(started.elapsed() >= period - Duration::from_millis(10));
    }

    /// Nor later: the timer armed before a silent wait fires near its end,
    /// and the wait ends when its own period does, not a period after that.
    #[tokio::test]
    async fn a_silent_wait_ends_when_its_period_does() {
        let period = Duration::from_millis(400);
        let mut idle = IdleBound::new(period);
        assert_eq!(idle.within(ready_on_second_poll()).await, Some(()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        assert_eq!(idle.within(std::future::pending::<()>()).await, None);
        let waited = started.elapsed();
        // Re-armed for a whole period it would end about 350 ms later.
        assert!(waited >= period - Duration::from_millis(10), "{waited:?}");
        assert!(waited < period + Duration::from_millis(200), "{waited:?}");
    }
}
