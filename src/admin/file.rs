//! The files of `mappings import`: JSON lines as `mappings export` writes
//! them, or CSV with a `user_number,agent_id` header (and optionally
//! `created_at,updated_at`). Every row keeps its line number, so each
//! problem names the file and the line.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, UserRules};
use crate::mapping::sql_admin::ImportRow;

/// One mapping as exported and imported.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingLine {
    pub user_number: String,
    pub agent_id: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A row the file cannot give: where, and why.
pub struct Rejected {
    pub line: usize,
    pub reason: String,
}

/// The rows of `path`, validated; or an error naming the file when it
/// cannot be read at all.
pub fn read(
    path: &Path,
    rules: &Arc<UserRules>,
) -> Result<(Vec<ImportRow>, Vec<Rejected>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
    if text.trim_start_matches('\u{feff}').trim().is_empty() {
        return Err(format!("{}: holds no mapping", path.display()));
    }
    let lines = if looks_like_json(&text) {
        json_lines(&text)
    } else {
        csv_lines(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (line, parsed) in lines {
        match parsed.and_then(|m| validate(line, m, rules)) {
            Ok(row) => rows.push(row),
            Err(reason) => rejected.push(Rejected { line, reason }),
        }
    }
    if rows.is_empty() && rejected.is_empty() {
        return Err(format!("{}: holds no mapping", path.display()));
    }
    Ok((rows, rejected))
}

fn looks_like_json(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('{')
}

type Parsed = Vec<(usize, Result<MappingLine, String>)>;

fn json_lines(text: &str) -> Parsed {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = serde_json::from_str(l.trim_start_matches('\u{feff}'))
                .map_err(|e| format!("not a mapping: {e}"));
            (i + 1, line)
        })
        .collect()
}

fn csv_lines(text: &str) -> Result<Parsed, String> {
    let text = text.trim_start_matches('\u{feff}');
    // The line a record starts on, from its byte offset: csv's own line
    // count leaves out the blank lines it skips (its offset is before them).
    let bytes = text.as_bytes();
    let line_at = |p: Option<&csv::Position>| {
        p.map_or(0, |p| {
            let mut at = usize::try_from(p.byte())
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            while at < bytes.len() && matches!(bytes[at], b'\n' | b'\r') {
                at += 1;
            }
            bytes[..at].iter().filter(|b| **b == b'\n').count() + 1
        })
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| format!("line 1: not a CSV header: {e}"))?
        .clone();
    let known = ["user_number", "agent_id", "created_at", "updated_at"];
    if let Some(unknown) = header.iter().find(|h| !known.contains(h)) {
        return Err(format!(
            "line 1: unknown column {unknown:?}: the columns are user_number,agent_id \
             and optionally created_at,updated_at"
        ));
    }
    for needed in &known[..2] {
        if !header.iter().any(|h| h == *needed) {
            return Err(format!("line 1: the header has no column {needed}"));
        }
    }
    let mut parsed = Vec::new();
    for record in reader.records() {
        let line = match &record {
            Ok(r) => line_at(r.position()),
            Err(e) => line_at(e.position()),
        };
        let row = record
            .map_err(|e| format!("not a CSV row: {e}"))
            .and_then(|r| {
                if r.len() != header.len() {
                    return Err(format!(
                        "{} fields where the header has {}",
                        r.len(),
                        header.len()
                    ));
                }
                r.deserialize::<MappingLine>(Some(&header))
                    .map_err(|e| format!("not a mapping: {e}"))
            });
        parsed.push((line, row));
    }
    Ok(parsed)
}

/// ISO 8601 / RFC 3339 as both databases read it.
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    #[expect(clippy::expect_used, reason = "a constant pattern, covered by tests")]
    Regex::new(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?$")
        .expect("time pattern")
});

fn validate(line: usize, m: MappingLine, rules: &Arc<UserRules>) -> Result<ImportRow, String> {
    let user = rules
        .parse(&m.user_number)
        .map_err(|e| format!("user_number: {e}"))?;
    let agent = AgentId::parse(&m.agent_id).map_err(|e| format!("agent_id: {e}"))?;
    let time = |key: &str, value: Option<String>| match value.filter(|v| !v.is_empty()) {
        Some(v) if !TIME.is_match(&v) => Err(format!(
            "{key}: {v:?} is not a time like 2026-12-07T10:00:00Z"
        )),
        v => Ok(v),
    };
    Ok(ImportRow {
        line,
        user,
        agent,
        created_at: time("created_at", m.created_at)?,
        updated_at: time("updated_at", m.updated_at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<(Vec<ImportRow>, Vec<Rejected>), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, text).unwrap();
        read(&path, &UserRules::standard())
    }

    #[test]
    fn csv_and_json_lines_give_the_same_rows_with_their_lines() {
        let csv = "user_number,agent_id\n+5521911110001,agent-a\n\n5521911110002,agent-b\n";
        let (rows, rejected) = read_text(csv).unwrap();
        assert!(rejected.is_empty());
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.line, r.user.as_str(), r.agent.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "5521911110001", "agent-a"),
                (4, "5521911110002", "agent-b")
            ]
        );
        let json = "{\"user_number\":\"+5521911110001\",\"agent_id\":\"agent-a\",\
                    \"created_at\":\"2026-01-02T03:04:05Z\",\"updated_at\":null}\n";
        let (rows, _) = read_text(json).unwrap();
        assert_eq!(rows[0].created_at.as_deref(), Some("2026-01-02T03:04:05Z"));
    }

    #[test]
    fn bad_rows_are_named_by_line_and_bad_files_by_what_is_wrong() {
        let csv = "user_number,agent_id\n12,agent-a\n5521911110002,a/b\n5521911110003\n";
        let (rows, rejected) = read_text(csv).unwrap();
        assert!(rows.is_empty());
        let lines: Vec<_> = rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(
            rejected[0].reason.starts_with("user_number"),
            "{}",
            rejected[0].reason
        );
        assert!(
            rejected[1].reason.starts_with("agent_id"),
            "{}",
            rejected[1].reason
        );
        let json = "{\"user_number\":\"5521911110001\",\"agent_id\":\"a\",\"phone\":1}\n";
        let (_, rejected) = read_text(json).unwrap();
        assert!(
            rejected[0].reason.contains("phone"),
            "{}",
            rejected[0].reason
        );
        let e = read_text("user_number,agent,x\n").err().unwrap();
        assert!(e.contains("unknown column \"agent\""), "{e}");
        let e = read_text("").err().unwrap();
        assert!(e.contains("holds no mapping"), "{e}");
        let (_, rejected) =
            read_text("user_number,agent_id,created_at\n5521911110001,agent-a,yesterday\n")
                .unwrap();
        assert!(
            rejected[0].reason.starts_with("created_at"),
            "{}",
            rejected[0].reason
        );
    }
}
