//! The operator commands of the binary for the user → agent mapping and
//! the agents behind it: `eai-gateway mappings check | resolve | export |
//! import` and `eai-gateway agents reconcile`. Each opens the
//! configured store, does its work on a runtime of its own, prints a report
//! and tells the binary how to exit. User numbers appear masked, as in the
//! logs.

mod doubles;
mod file;
mod reconcile;
mod transfer;

use std::future::Future;
use std::sync::Arc;

use crate::ids::{UserNumber, UserRules};
use crate::mapping::SqlStore;
use crate::settings::Settings;

pub use doubles::{Resolve, check, resolve};
pub use reconcile::{OrphanSweeper, Reconcile, reconcile};
pub use transfer::{export, import};

/// How a command ended, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report (exit 0).
    Clean,
    /// Done, with findings an operator must look at (exit 1): double
    /// mappings, import conflicts, an agent that could not be deleted.
    Findings,
}

/// Runs `work` with the store of `cfg` on a runtime of its own.
fn with_store<T, F>(
    cfg: &Settings,
    work: impl FnOnce(Arc<SqlStore>, Arc<UserRules>) -> F,
) -> Result<T, String>
where
    F: Future<Output = Result<T, String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let store =
            Arc::new(SqlStore::connect_lazy(&cfg.database).map_err(|e| format!("database: {e}"))?);
        let result = work(store.clone(), UserRules::new(&cfg.users)).await;
        store.close().await;
        result
    })
}

fn db(e: sqlx::Error) -> String {
    format!("database: {e}")
}

/// A stored spelling, masked: the user's mask, with the `+` if it had one.
fn masked_spelling(user: &UserNumber, spelling: &str) -> String {
    let plus = if spelling.starts_with('+') { "+" } else { "" };
    format!("{plus}{}", user.masked())
}
