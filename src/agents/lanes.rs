//! Per-user lanes: chats of one user run one at a time, in arrival order
//! (tokio's mutex is fair); different users never wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::ids::UserNumber;

type Lane = Arc<tokio::sync::Mutex<()>>;

#[derive(Default, Clone)]
pub struct UserLanes {
    lanes: Arc<Mutex<HashMap<UserNumber, Lane>>>,
}

/// Holding this is holding the user's lane; dropping it (also when the
/// client disconnects and the chat future is dropped) frees the lane.
pub struct LaneGuard {
    guard: Option<OwnedMutexGuard<()>>,
    user: UserNumber,
    lanes: Arc<Mutex<HashMap<UserNumber, Lane>>>,
}

impl UserLanes {
    pub async fn acquire(&self, user: &UserNumber) -> LaneGuard {
        let lane = {
            let mut map = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(user.clone()).or_default().clone()
        };
        LaneGuard {
            guard: Some(lane.lock_owned().await),
            user: user.clone(),
            lanes: self.lanes.clone(),
        }
    }

    /// Users with a chat running or queued.
    pub fn active(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        // Waiters clone the lane under this same lock, so a count of one
        // means nobody is queued and the entry can go.
        if map
            .get(&self.user)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_user_waits_other_user_does_not() {
        let lanes = UserLanes::default();
        let a = UserNumber::parse("5521000000001").unwrap();
        let b = UserNumber::parse("5521000000002").unwrap();
        let held = lanes.acquire(&a).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), lanes.acquire(&a)).await;
        assert!(blocked.is_err(), "second chat of a user must wait");
        let other = tokio::time::timeout(Duration::from_millis(50), lanes.acquire(&b)).await;
        assert!(other.is_ok(), "another user must not wait");
        drop(other);
        drop(held);
        assert_eq!(lanes.active(), 0, "lanes are removed when idle");
        let again = tokio::time::timeout(Duration::from_millis(50), lanes.acquire(&a)).await;
        assert!(again.is_ok());
    }
}
