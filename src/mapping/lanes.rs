//! Per-user lanes: chats of one user run one at a time, in arrival order
//! (tokio's mutex is fair); different users never wait on each other. The
//! number of a user's chats holding or waiting for the lane is capped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::ids::UserNumber;

/// One user's lane and the number of chats holding or waiting for it.
#[derive(Default)]
struct Lane {
    mutex: Arc<tokio::sync::Mutex<()>>,
    tickets: usize,
}

/// The lanes, and the tickets not yet holding theirs (chats queued behind
/// an earlier message of their user), behind one pointer per ticket.
#[derive(Default)]
struct Lanes {
    map: Mutex<HashMap<UserNumber, Lane>>,
    waiting: AtomicUsize,
}

type LaneMap = Arc<Lanes>;

#[derive(Default, Clone)]
pub struct UserLanes {
    lanes: LaneMap,
}

/// A place in the user's queue; `wait` turns it into the lane itself. Every
/// live ticket (waiting or holding) counts towards the user's queue depth.
pub struct LaneTicket {
    mutex: Arc<tokio::sync::Mutex<()>>,
    user: UserNumber,
    lanes: LaneMap,
    holding: bool,
}

/// Holding this is holding the user's lane.
pub struct LaneGuard {
    _guard: OwnedMutexGuard<()>,
    _ticket: LaneTicket,
}

pub struct QueueFull;

fn lock(lanes: &LaneMap) -> std::sync::MutexGuard<'_, HashMap<UserNumber, Lane>> {
    lanes.map.lock().unwrap_or_else(|p| p.into_inner())
}

impl UserLanes {
    /// Joins the user's queue unless `max_queued` chats are already in it.
    pub fn enqueue(
        &self,
        user: &UserNumber,
        max_queued: Option<usize>,
    ) -> Result<LaneTicket, QueueFull> {
        let mut map = lock(&self.lanes);
        let lane = map.entry(user.clone()).or_default();
        if max_queued.is_some_and(|max| lane.tickets >= max) {
            if lane.tickets == 0 {
                map.remove(user);
            }
            return Err(QueueFull);
        }
        lane.tickets += 1;
        self.lanes.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(LaneTicket {
            mutex: lane.mutex.clone(),
            user: user.clone(),
            lanes: self.lanes.clone(),
            holding: false,
        })
    }

    /// Chats waiting for their user's lane.
    pub fn waiting(&self) -> usize {
        self.lanes.waiting.load(Ordering::Relaxed)
    }

    /// Users with a chat running or queued.
    #[cfg(test)]
    fn active(&self) -> usize {
        lock(&self.lanes).len()
    }
}

impl LaneTicket {
    pub async fn wait(mut self) -> LaneGuard {
        let guard = self.mutex.clone().lock_owned().await;
        self.lanes.waiting.fetch_sub(1, Ordering::Relaxed);
        self.holding = true;
        LaneGuard {
            _guard: guard,
            _ticket: self,
        }
    }
}

impl Drop for LaneTicket {
    fn drop(&mut self) {
        if !self.holding {
            self.lanes.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let mut map = lock(&self.lanes);
        if let Some(lane) = map.get_mut(&self.user) {
            lane.tickets -= 1;
            if lane.tickets == 0 {
                map.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(n: u8) -> UserNumber {
        crate::ids::UserRules::standard()
            .parse(&format!("55210000000{n:02}"))
            .unwrap()
    }

    #[tokio::test]
    async fn same_user_waits_other_user_does_not() {
        let lanes = UserLanes::default();
        let held = lanes.enqueue(&user(1), None).ok().unwrap().wait().await;
        let second = lanes.enqueue(&user(1), None).ok().unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(50), second.wait()).await;
        assert!(blocked.is_err(), "second chat of a user must wait");
        let other = lanes.enqueue(&user(2), None).ok().unwrap();
        let other = tokio::time::timeout(Duration::from_millis(50), other.wait()).await;
        assert!(other.is_ok(), "another user must not wait");
        drop(other);
        drop(held);
        assert_eq!(lanes.active(), 0, "lanes are removed when idle");
    }

    #[tokio::test]
    async fn queue_depth_is_capped_and_freed() {
        let lanes = UserLanes::default();
        let a = lanes.enqueue(&user(1), Some(2)).ok().unwrap();
        let b = lanes.enqueue(&user(1), Some(2)).ok().unwrap();
        assert!(lanes.enqueue(&user(1), Some(2)).is_err());
        assert!(lanes.enqueue(&user(2), Some(2)).is_ok());
        let held = a.wait().await;
        assert!(
            lanes.enqueue(&user(1), Some(2)).is_err(),
            "the holder still counts"
        );
        drop(held);
        assert!(lanes.enqueue(&user(1), Some(2)).is_ok());
        drop(b);
    }
}
