//! One user, several rows: a table adopted from an earlier service may hold
//! the same person under two spellings (`+5521…` and `5521…`), each with its
//! own agent. Until an operator resolves it (`eai-gateway mappings
//! resolve`), `agents.duplicate_policy` picks the row that serves, and every
//! lookup that sees such a user says so in the log.

use std::cmp::Reverse;

use super::store::{MappedRow, MappingStore};
use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};
use crate::metrics;
use crate::settings::DuplicatePolicy;

/// The agent that serves `user`: the policy's pick among their rows.
pub async fn lookup(
    store: &dyn MappingStore,
    policy: DuplicatePolicy,
    user: &UserNumber,
) -> GatewayResult<Option<AgentId>> {
    let rows = store.get(user).await?;
    let chosen = choose(policy, user.as_str(), &rows).map(|r| r.agent.clone());
    if rows.len() > 1
        && let Some(serving) = &chosen
    {
        metrics::DUPLICATE_MAPPINGS_SERVED.inc();
        let others: Vec<&str> = rows
            .iter()
            .map(|r| r.agent.as_str())
            .filter(|a| *a != serving.as_str())
            .collect();
        tracing::warn!(
            user = %user.masked(),
            serving = %serving,
            others = ?others,
            policy = policy.name(),
            "User has more than one mapping row; serving one by agents.duplicate_policy. \
             See `eai-gateway mappings check`."
        );
    }
    Ok(chosen)
}

/// The row that serves a user whose canonical number is `canonical`.
/// Ties in time go to the canonical spelling, then to the spelling's order,
/// so every replica picks the same row.
pub fn choose<'a>(
    policy: DuplicatePolicy,
    canonical: &str,
    rows: &'a [MappedRow],
) -> Option<&'a MappedRow> {
    // Unknown creation times count as newest: only a row written after
    // adoption by a service that sets no time can lack one.
    let created = |r: &MappedRow| r.created_ms.unwrap_or(i64::MAX);
    let tie = |r: &'a MappedRow| (r.spelling != canonical, r.spelling.as_str());
    match policy {
        DuplicatePolicy::Canonical => rows
            .iter()
            .find(|r| r.spelling == canonical)
            .or_else(|| choose(DuplicatePolicy::Oldest, canonical, rows)),
        DuplicatePolicy::Oldest => rows.iter().min_by_key(|r| (created(r), tie(r))),
        DuplicatePolicy::Newest => rows.iter().min_by_key(|r| (Reverse(created(r)), tie(r))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(spelling: &str, agent: &str, created_ms: Option<i64>) -> MappedRow {
        MappedRow {
            spelling: spelling.into(),
            agent: AgentId::parse(agent).unwrap(),
            created_ms,
        }
    }

    fn pick(policy: DuplicatePolicy, rows: &[MappedRow]) -> &str {
        choose(policy, "5521911110003", rows)
            .unwrap()
            .agent
            .as_str()
    }

    #[test]
    fn each_policy_picks_its_row() {
        let plus_old = row("+5521911110003", "agent-c1", Some(1));
        let canon_new = row("5521911110003", "agent-c2", Some(2));
        let rows = [plus_old.clone(), canon_new.clone()];
        assert_eq!(pick(DuplicatePolicy::Canonical, &rows), "agent-c2");
        assert_eq!(pick(DuplicatePolicy::Oldest, &rows), "agent-c1");
        assert_eq!(pick(DuplicatePolicy::Newest, &rows), "agent-c2");
        // Without a canonical row, the canonical policy takes the oldest.
        let only_plus = [row("+5521911110003", "agent-c1", Some(5))];
        assert_eq!(pick(DuplicatePolicy::Canonical, &only_plus), "agent-c1");
        // Same time (an adopted table): the canonical spelling wins either way.
        let same = [
            row("+5521911110003", "agent-c1", Some(7)),
            row("5521911110003", "agent-c2", Some(7)),
        ];
        assert_eq!(pick(DuplicatePolicy::Oldest, &same), "agent-c2");
        assert_eq!(pick(DuplicatePolicy::Newest, &same), "agent-c2");
        // Unknown time counts as newest.
        let unknown = [
            row("+5521911110003", "agent-c1", None),
            row("5521911110003", "agent-c2", Some(7)),
        ];
        assert_eq!(pick(DuplicatePolicy::Oldest, &unknown), "agent-c2");
        assert_eq!(pick(DuplicatePolicy::Newest, &unknown), "agent-c1");
        assert!(choose(DuplicatePolicy::Canonical, "5521911110003", &[]).is_none());
    }
}
