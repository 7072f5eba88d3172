//! The reference documentation against the code, so neither drifts from
//! the other: `docs/configuration.md` names exactly the keys the settings
//! accept (with the reload behaviour the code gives them),
//! `docs/metrics.md` exactly the metrics the gateway registers, and every
//! link of the documentation leads to a file and heading that exist.
//!
//! The lists come from `eai_gateway::catalog`, which reads them from the
//! code (serde's own field lists, the metric registrations), never from a
//! list kept by hand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use eai_gateway::catalog;
use eai_gateway::settings::RESTART_ONLY;

/// A row marked with this describes a key that has not landed yet.
const PENDING: &str = "(pending";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One body row of a markdown table.
struct Row {
    /// The first header cell of its table: what the table lists.
    table: String,
    cells: Vec<String>,
    /// 1-based, for messages.
    line: usize,
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

fn is_separator(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('|') && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

/// Every body row of every table outside code blocks.
fn table_rows(text: &str) -> Vec<Row> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rows = Vec::new();
    let mut header: Option<String> = None;
    let mut in_code = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.trim_start().starts_with('|') {
            header = None;
            continue;
        }
        match &header {
            None => {
                if lines.get(i + 1).is_some_and(|next| is_separator(next)) {
                    header = cells(line).into_iter().next();
                }
            }
            Some(_) if is_separator(line) => {}
            Some(table) => rows.push(Row {
                table: table.clone(),
                cells: cells(line),
                line: i + 1,
            }),
        }
    }
    rows
}

/// The texts between backticks in `cell`.
fn backticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

fn report(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn docs_configuration_lists_every_setting_key() {
    let keys = catalog::config_keys();
    assert!(
        keys.values.contains("listen") && keys.values.contains("routes[].prefix"),
        "the key catalogue looks broken: {keys:?}"
    );
    let file = "docs/configuration.md";
    let text = read(&repo().join(file));
    let accepted = |key: &str| keys.values.contains(key) || keys.sections.contains(key);
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for row in table_rows(&text) {
        let at = format!("{file}:{}", row.line);
        if row.table == "variable" {
            // What an environment variable overrides must exist too.
            for key in backticked(row.cells.get(1).map_or("", String::as_str)) {
                if !accepted(key) {
                    problems.push(format!("{at}: overrides `{key}`, which is no key"));
                }
            }
            continue;
        }
        if row.table != "key" {
            continue;
        }
        let Some(key) = backticked(&row.cells[0]).first().copied() else {
            problems.push(format!("{at}: a key row without a `key` in backticks"));
            continue;
        };
        if row.cells.iter().any(|c| c.contains(PENDING)) {
            if accepted(key) {
                problems.push(format!(
                    "{at}: `{key}` is marked pending, but the settings accept it now: \
                     remove the mark"
                ));
            }
            continue;
        }
        if !accepted(key) {
            problems.push(format!(
                "{at}: `{key}` is documented, but the settings accept no such key"
            ));
            continue;
        }
        documented.insert(key.to_owned());
        let restart = RESTART_ONLY
            .iter()
            .any(|r| key == r.key || key.starts_with(&format!("{}.", r.key)));
        let expected = if restart { "restart" } else { "yes" };
        let reload = row.cells.get(1).map_or("", String::as_str);
        if reload != expected {
            problems.push(format!(
                "{at}: `{key}` says reload `{reload}`, but the code makes it `{expected}` \
                 (settings::RESTART_ONLY)"
            ));
        }
    }
    for key in &keys.values {
        if !documented.contains(key) {
            problems.push(format!(
                "{file}: no row for `{key}`, which the settings accept"
            ));
        }
    }
    report(&problems);
}

#[test]
fn docs_metrics_lists_every_metric() {
    let names = catalog::metric_names();
    assert!(
        names.contains("eai_gateway_requests_total"),
        "the metric catalogue looks broken: {names:?}"
    );
    let file = "docs/metrics.md";
    let text = read(&repo().join(file));
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for row in table_rows(&text)
        .into_iter()
        .filter(|r| r.table == "metric")
    {
        let listed = backticked(&row.cells[0]);
        if listed.is_empty() {
            problems.push(format!("{file}:{}: a metric row without a name", row.line));
        }
        for name in listed {
            if !names.contains(name) {
                problems.push(format!(
                    "{file}:{}: `{name}` is documented, but the gateway registers no such metric",
                    row.line
                ));
            }
            documented.insert(name.to_owned());
        }
    }
    for name in &names {
        if !documented.contains(name) {
            problems.push(format!(
                "{file}: no row for `{name}`, which the gateway registers"
            ));
        }
    }
    report(&problems);
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The targets of the `[text](target)` links outside code blocks, by line.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut in_code = false;
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                found.push((i + 1, rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
    }
    found
}

#[test]
fn docs_links_point_at_existing_files() {
    let root = repo();
    let mut files = vec![
        root.join("README.md"),
        root.join("bench/README.md"),
        root.join("deploy/kubernetes/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut problems = Vec::new();
    for file in &files {
        let text = read(file);
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a file's directory").join(path)
            };
            if !resolved.exists() {
                problems.push(format!("{name}:{line}: {target}: no such file"));
                continue;
            }
            let is_markdown = resolved.extension().is_some_and(|x| x == "md");
            if !fragment.is_empty() && is_markdown && !anchors(&read(&resolved)).contains(fragment)
            {
                problems.push(format!("{name}:{line}: {target}: no such heading"));
            }
        }
    }
    report(&problems);
}
