//! `mappings check` and `mappings resolve`: users stored under more than one
//! spelling, each with its own agent, found, shown, and reduced to one row.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::{Outcome, db, masked_spelling, with_store};
use crate::context::{RequestContext, RequestId};
use crate::ids::{AgentId, UserNumber, UserRules};
use crate::mapping::sql_admin::StoredMapping;
use crate::mapping::{LeaseStore, MappedRow, MappingStore, SqlStore, duplicates};
use crate::settings::Settings;

/// One user and their rows.
struct Double {
    user: UserNumber,
    rows: Vec<MappedRow>,
    created: Vec<Option<String>>,
}

/// Every user with more than one row. Rows under a spelling the pattern
/// rejects serve nobody and are no double of anyone.
async fn doubles(store: &SqlStore, rules: &Arc<UserRules>) -> Result<Vec<Double>, String> {
    let mut found: Vec<Double> = Vec::new();
    for stored in store.double_rows().await.map_err(db)? {
        let Ok(user) = rules.parse(&stored.user_number) else {
            continue;
        };
        let StoredMapping {
            user_number,
            agent_id,
            created_at,
            created_ms,
            ..
        } = stored;
        let Ok(agent) = AgentId::parse(&agent_id) else {
            continue;
        };
        let row = MappedRow {
            spelling: user_number,
            agent,
            created_ms,
        };
        match found.last_mut() {
            Some(last) if last.user == user => {
                last.rows.push(row);
                last.created.push(created_at);
            }
            _ => found.push(Double {
                user,
                rows: vec![row],
                created: vec![created_at],
            }),
        }
    }
    found.retain(|d| d.rows.len() > 1);
    Ok(found)
}

/// Lists every user with more than one row, and the rows no request can
/// reach (a number the pattern rejects).
pub fn check(cfg: &Settings, out: &mut dyn Write) -> Result<Outcome, String> {
    let policy = cfg.mapping.duplicate_policy;
    with_store(cfg, async |store, rules| {
        let found = doubles(&store, &rules).await?;
        let io = |e: std::io::Error| e.to_string();
        for d in &found {
            let serving = duplicates::choose(policy, d.user.as_str(), &d.rows);
            writeln!(out, "user {}: {} rows", d.user.masked(), d.rows.len()).map_err(io)?;
            for (row, created) in d.rows.iter().zip(&d.created) {
                let mark = if serving == Some(row) {
                    format!("  <- serves (agents.duplicate_policy: {})", policy.name())
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "  {:<28} {:<40} created {}{mark}",
                    masked_spelling(&d.user, &row.spelling),
                    row.agent,
                    created.as_deref().unwrap_or("unknown"),
                )
                .map_err(io)?;
            }
        }
        let mut unreachable = 0u64;
        let total = store
            .each_mapping(|m| {
                unreachable += u64::from(rules.parse(&m.user_number).is_err());
                Ok(())
            })
            .await
            .map_err(db)?;
        if unreachable > 0 {
            writeln!(
                out,
                "{unreachable} rows have a user_number that users.pattern rejects: \
                 no request can reach them"
            )
            .map_err(io)?;
        }
        let rows: usize = found.iter().map(|d| d.rows.len()).sum();
        writeln!(
            out,
            "{} users with more than one mapping ({rows} rows) among {total} rows",
            found.len()
        )
        .map_err(io)?;
        Ok(if found.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Findings
        })
    })
}

/// What `mappings resolve` resolves.
pub struct Resolve {
    /// One user (any spelling); `None` resolves every user with doubles.
    pub user: Option<String>,
    /// The agent to keep; `None` keeps the policy's choice.
    pub keep: Option<String>,
    /// Also delete the agents of the removed rows at the agent service.
    pub delete_agents: bool,
}

/// How long resolve waits for a user's chat in progress to end.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Keeps one row per user (the one named, or the policy's) and removes the
/// others; deletes their agents at the agent service only with
/// `delete_agents`.
pub fn resolve(cfg: &Settings, what: &Resolve, out: &mut dyn Write) -> Result<Outcome, String> {
    let policy = cfg.mapping.duplicate_policy;
    let agents = if what.delete_agents {
        Some(
            crate::agent_service::build(&cfg.agent_service)
                .map_err(|e| format!("agent_service: {e}"))?,
        )
    } else {
        None
    };
    let keep = what
        .keep
        .as_deref()
        .map(|k| AgentId::parse(k).map_err(|e| format!("--keep: {e}")))
        .transpose()?;
    with_store(cfg, async |store, rules| {
        let io = |e: std::io::Error| e.to_string();
        let targets = match &what.user {
            Some(raw) => {
                let user = rules.parse(raw).map_err(|e| format!("--user: {e}"))?;
                let rows = store.get(&user).await.map_err(|e| e.to_string())?;
                vec![Double {
                    user,
                    rows,
                    created: Vec::new(),
                }]
            }
            None => doubles(&store, &rules).await?,
        };
        let (mut users, mut removed, mut failed) = (0, 0, 0);
        for d in targets {
            let kept = match &keep {
                Some(k) => d.rows.iter().find(|r| &r.agent == k).ok_or_else(|| {
                    let theirs: Vec<&str> = d.rows.iter().map(|r| r.agent.as_str()).collect();
                    format!(
                        "--keep: {k} is not mapped to this user (theirs: {})",
                        theirs.join(", ")
                    )
                })?,
                None => match duplicates::choose(policy, d.user.as_str(), &d.rows) {
                    Some(row) => row,
                    None => {
                        writeln!(out, "user {}: no mapping", d.user.masked()).map_err(io)?;
                        continue;
                    }
                },
            };
            let others: Vec<&MappedRow> = d.rows.iter().filter(|r| *r != kept).collect();
            if others.is_empty() {
                writeln!(out, "user {}: one row, nothing to resolve", d.user.masked())
                    .map_err(io)?;
                continue;
            }
            // In the user's turn, as a chat or a DELETE would be: no message
            // of theirs is on its way to an agent being unmapped.
            let holder = format!("mappings-resolve:{}", std::process::id());
            let deadline = tokio::time::Instant::now() + TURN_WAIT;
            while !store
                .try_lease(&d.user, &holder, TURN_WAIT * 3)
                .await
                .map_err(|e| e.to_string())?
            {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "user {}: a chat of theirs is still in progress; run resolve again later",
                        d.user.masked()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let pairs: Vec<(String, String)> = others
                .iter()
                .map(|r| (r.spelling.clone(), r.agent.to_string()))
                .collect();
            let result = store.remove_rows(&d.user, &pairs).await;
            let _ = store.release_lease(&d.user, &holder).await;
            removed += result.map_err(db)?;
            users += 1;
            writeln!(
                out,
                "user {}: kept {} ({})",
                d.user.masked(),
                kept.agent,
                masked_spelling(&d.user, &kept.spelling)
            )
            .map_err(io)?;
            for row in others {
                let agent_fate = match &agents {
                    None => "agent left at the agent service (--delete-agents deletes it)".into(),
                    Some(service) => {
                        let ctx = RequestContext::new(RequestId::generate());
                        match service.delete_agent(&ctx, &row.agent).await {
                            Ok(_) => "agent deleted at the agent service".to_owned(),
                            Err(e) => {
                                failed += 1;
                                format!("agent could not be deleted at the agent service: {e}")
                            }
                        }
                    }
                };
                writeln!(
                    out,
                    "  removed {} ({}): {agent_fate}",
                    row.agent,
                    masked_spelling(&d.user, &row.spelling)
                )
                .map_err(io)?;
            }
        }
        writeln!(out, "resolved {users} users, removed {removed} rows").map_err(io)?;
        Ok(if failed > 0 {
            Outcome::Findings
        } else {
            Outcome::Clean
        })
    })
}
