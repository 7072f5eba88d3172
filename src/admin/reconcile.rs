//! Orphaned agents: agents the gateway created (Letta's `eai-gateway` tag)
//! that no mapping references: a crash between creating an agent and
//! storing its mapping, a lost claim race whose clean-up failed, a forgotten
//! user whose agent's delete failed, rows deleted by hand. `eai-gateway
//! agents reconcile` lists them (and deletes them with `--delete`); `run`
//! can look periodically (`agents.reconcile_interval_seconds`), one replica
//! at a time.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Outcome, with_store};
use crate::agent_service::{AgentService, ListedAgent};
use crate::context::{RequestContext, RequestId};
use crate::mapping::SqlStore;
use crate::metrics;
use crate::settings::{MappingSettings, Settings};

/// What `agents reconcile` does.
pub struct Reconcile {
    /// Delete the orphans found (never without it).
    pub delete: bool,
    /// One JSON object instead of lines.
    pub json: bool,
    /// Overrides `agents.orphan_min_age_seconds`.
    pub min_age: Option<Duration>,
}

/// The agents tagged as the gateway's, older than `min_age`, that no
/// mapping references; and how many tagged agents were listed. `None` when
/// the dialect has no listing.
async fn find_orphans(
    store: &SqlStore,
    agents: &dyn AgentService,
    min_age: Duration,
) -> Result<Option<(Vec<ListedAgent>, usize)>, String> {
    let ctx = RequestContext::new(RequestId::generate());
    let Some(listed) = agents
        .list_gateway_agents(&ctx)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let total = listed.len();
    let cutoff = OffsetDateTime::now_utc() - min_age;
    // A time that cannot be read counts as recent: never deleted on a guess.
    let old: Vec<ListedAgent> = listed
        .into_iter()
        .filter(|a| OffsetDateTime::parse(&a.created_at, &Rfc3339).is_ok_and(|t| t <= cutoff))
        .collect();
    let ids: Vec<&str> = old.iter().map(|a| a.id.as_str()).collect();
    let mapped = store.mapped_among(&ids).await.map_err(super::db)?;
    let orphans = old
        .into_iter()
        .filter(|a| !mapped.contains(a.id.as_str()))
        .collect();
    Ok(Some((orphans, total)))
}

/// Deletes the orphans that are still unmapped; how many went.
async fn delete_orphans(
    store: &SqlStore,
    agents: &dyn AgentService,
    orphans: &[ListedAgent],
) -> usize {
    let ctx = RequestContext::new(RequestId::generate());
    let mut deleted = 0;
    for orphan in orphans {
        // Mapped since the listing (an import, an operator): it stays.
        match store.mapped_among(&[orphan.id.as_str()]).await {
            Ok(mapped) if mapped.is_empty() => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "Could not re-check an orphan; leaving it.");
                continue;
            }
        }
        match agents.delete_agent(&ctx, &orphan.id).await {
            Ok(_) => {
                deleted += 1;
                tracing::info!(agent = %orphan.id, "Orphaned agent deleted.");
            }
            Err(e) => {
                tracing::warn!(agent = %orphan.id, error = %e, "Orphaned agent could not be deleted.")
            }
        }
    }
    deleted
}

/// `eai-gateway agents reconcile`.
pub fn reconcile(cfg: &Settings, what: &Reconcile, out: &mut dyn Write) -> Result<Outcome, String> {
    let agents = crate::agent_service::build(&cfg.agent_service)
        .map_err(|e| format!("agent_service: {e}"))?;
    let min_age = what.min_age.unwrap_or(cfg.mapping.orphan_min_age);
    with_store(cfg, async |store, _| {
        let io = |e: std::io::Error| e.to_string();
        let Some((orphans, listed)) = find_orphans(&store, &*agents, min_age).await? else {
            return Err(format!(
                "the {} dialect has no agent listing, so orphaned agents cannot be found \
                 (reconcile needs agent_service.dialect: letta)",
                cfg.agent_service.dialect.as_str()
            ));
        };
        let deleted = if what.delete {
            Some(delete_orphans(&store, &*agents, &orphans).await)
        } else {
            None
        };
        if what.json {
            let report = json!({
                "orphans": orphans,
                "found": orphans.len(),
                "listed": listed,
                "min_age_seconds": min_age.as_secs(),
                "deleted": deleted,
            });
            writeln!(out, "{report}").map_err(io)?;
        } else {
            for a in &orphans {
                writeln!(out, "{}\t{}\t{}", a.id, a.name, a.created_at).map_err(io)?;
            }
            writeln!(
                out,
                "{} orphaned agents (of {listed} tagged {}; agents younger than {} s skipped){}",
                orphans.len(),
                crate::agent_service::GATEWAY_TAG,
                min_age.as_secs(),
                deleted.map_or(String::new(), |d| format!("; deleted {d}"))
            )
            .map_err(io)?;
        }
        let left = orphans.len() - deleted.unwrap_or(0);
        Ok(if left == 0 {
            Outcome::Clean
        } else {
            Outcome::Findings
        })
    })
}

/// The `chat_leases` key of the periodic look: not a number, so no user's.
const TURN_KEY: &str = "~reconcile";

/// The periodic look inside `run`, a Pingora background service. Only the
/// replica holding the `~reconcile` row of `chat_leases` looks: a lease row
/// rather than a PostgreSQL advisory lock, because it works the same on
/// SQLite and through a transaction pooler, which keeps no session.
pub struct OrphanSweeper {
    settings: Settings,
}

impl OrphanSweeper {
    /// `None` when `agents.reconcile_interval_seconds` is 0.
    pub fn new(settings: &Settings) -> Option<Self> {
        let MappingSettings {
            reconcile_interval, ..
        } = settings.mapping;
        (!reconcile_interval.is_zero()).then(|| Self {
            settings: settings.clone(),
        })
    }

    async fn sweep(&self, store: &SqlStore, agents: &dyn AgentService, holder: &str) {
        let interval = self.settings.mapping.reconcile_interval;
        match store
            .try_lease_key(TURN_KEY, holder, interval.max(Duration::from_secs(30)))
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Orphan sweep skipped: no turn from the database.");
                return;
            }
        }
        match find_orphans(store, agents, self.settings.mapping.orphan_min_age).await {
            Ok(Some((orphans, listed))) => {
                metrics::ORPHANED_AGENTS
                    .with_label_values(&["found"])
                    .set(orphans.len() as i64);
                let deleted = if self.settings.mapping.reconcile_delete {
                    delete_orphans(store, agents, &orphans).await
                } else {
                    0
                };
                metrics::ORPHANED_AGENTS
                    .with_label_values(&["deleted"])
                    .set(deleted as i64);
                if !orphans.is_empty() {
                    tracing::warn!(
                        found = orphans.len(),
                        deleted,
                        listed,
                        "Orphaned agents: tagged as the gateway's, mapped to no user."
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "Orphan sweep failed."),
        }
        // Held until it expires otherwise: the next replica's turn would
        // wait out the whole interval.
        let _ = store.release_lease_key(TURN_KEY, holder).await;
    }
}

#[async_trait]
impl BackgroundService for OrphanSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let built = SqlStore::connect_lazy(&self.settings.database)
            .map_err(|e| e.to_string())
            .and_then(|store| {
                crate::agent_service::build(&self.settings.agent_service).map(|a| (store, a))
            });
        let (store, agents): (SqlStore, Arc<dyn AgentService>) = match built {
            Ok(parts) => parts,
            Err(e) => {
                tracing::error!(error = %e, "Orphan sweep cannot start.");
                return;
            }
        };
        let holder = format!("reconcile-{}", uuid::Uuid::new_v4());
        let interval = self.settings.mapping.reconcile_interval;
        if self.settings.agent_service.dialect == crate::settings::Dialect::Eai {
            tracing::warn!(
                "agents.reconcile_interval_seconds is set, but the eai dialect has no agent \
                 listing: no orphan sweep runs."
            );
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.sweep(&store, &*agents, &holder).await;
        }
    }
}
