//! `mappings export` and `mappings import`: every mapping as JSON lines, and
//! back, between any two stores (a SQLite deployment that outgrew the
//! embedded default, or a mapping kept elsewhere as CSV).

use std::io::Write;
use std::path::Path;

use super::file::{MappingLine, read};
use super::{Outcome, db, with_store};
use crate::mapping::sql_admin::Imported;
use crate::settings::Settings;

/// Writes every mapping as a JSON line (`user_number` as stored,
/// `agent_id`, `created_at`, `updated_at`); returns how many.
pub fn export(cfg: &Settings, out: &mut dyn Write) -> Result<u64, String> {
    with_store(cfg, async |store, _| {
        let written = store
            .each_mapping(|m| {
                let line = MappingLine {
                    user_number: m.user_number,
                    agent_id: m.agent_id,
                    created_at: m.created_at,
                    updated_at: m.updated_at,
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")
            })
            .await
            .map_err(db)?;
        out.flush().map_err(|e| e.to_string())?;
        Ok(written)
    })
}

/// Imports `path` (JSON lines or CSV) into the configured store in one
/// transaction. A file with any row it cannot take imports nothing and
/// names every such row; a row that conflicts with a stored mapping is
/// left out and named, the rest go in. Reports to `out`.
pub fn import(
    cfg: &Settings,
    path: &Path,
    replace: bool,
    out: &mut dyn Write,
) -> Result<Outcome, String> {
    let rules = crate::ids::UserRules::new(&cfg.users);
    let (rows, rejected) = read(path, &rules)?;
    let name = path.display();
    let io = |e: std::io::Error| e.to_string();
    if !rejected.is_empty() {
        for r in &rejected {
            writeln!(out, "{name}:{}: rejected: {}", r.line, r.reason).map_err(io)?;
        }
        return Err(format!(
            "{name}: {} rows rejected; nothing was imported (fix them and import again: \
             rows already stored are left unchanged)",
            rejected.len()
        ));
    }
    with_store(cfg, async |store, _| {
        let outcomes = store.import(&rows, replace).await.map_err(db)?;
        let (mut inserted, mut unchanged, mut replaced, mut conflicts) = (0, 0, 0, 0);
        for (row, outcome) in rows.iter().zip(&outcomes) {
            match outcome {
                Imported::Inserted => inserted += 1,
                Imported::Unchanged => unchanged += 1,
                Imported::Replaced(old) => {
                    replaced += 1;
                    writeln!(
                        out,
                        "{name}:{}: replaced: the user mapped to {} before, which is no longer mapped",
                        row.line,
                        old.join(", ")
                    )
                    .map_err(io)?;
                }
                Imported::Conflict(why) => {
                    conflicts += 1;
                    writeln!(out, "{name}:{}: conflict: {why}", row.line).map_err(io)?;
                }
            }
        }
        writeln!(
            out,
            "imported {inserted}, unchanged {unchanged}, replaced {replaced}, \
             conflicts {conflicts}, rejected 0"
        )
        .map_err(io)?;
        Ok(if conflicts > 0 {
            Outcome::Findings
        } else {
            Outcome::Clean
        })
    })
}
