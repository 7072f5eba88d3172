//! What the reference documentation must list, read from the code itself:
//! every configuration key the settings accept and every metric the
//! gateway registers. `tests/gateway/docs.rs` compares these with
//! `docs/configuration.md` and `docs/metrics.md`, so neither can drift.
//!
//! Keys come from serde: a probe document with an unknown key at each
//! level makes a `deny_unknown_fields` struct name every field it accepts
//! (aliases included), so a renamed, added or removed field shows up here
//! without anyone editing a list.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::settings::Settings;

/// The key no struct of the settings accepts.
const PROBE: &str = "__probe__";

/// The configuration keys the settings accept.
#[derive(Debug, Default)]
pub struct ConfigKeys {
    /// Keys holding a value (`chat.timeout_seconds`, `routes[].prefix`,
    /// `upstreams.NAME.backends`): each must be documented.
    pub values: BTreeSet<String>,
    /// Sections holding keys (`chat`, `chat.poll`, `upstreams.NAME`): a
    /// document may name them, but need not.
    pub sections: BTreeSet<String>,
}

/// One step into the probe document.
enum Step {
    /// A field of a struct.
    Field(String),
    /// A name the operator chooses, as under `upstreams:`.
    Name,
    /// An element of a list, as under `routes:`.
    Item,
}

/// How the settings read the value at a path.
enum Shape {
    /// A struct: these fields, nothing else.
    Struct(Vec<String>),
    /// A map from names the operator chooses to values.
    Map,
    /// A list of structs.
    List,
    /// One value (a scalar, a list of scalars, or free-form data).
    Value,
}

/// Every key the settings accept, found by probing `Settings`'
/// deserializer.
pub fn config_keys() -> ConfigKeys {
    let mut keys = ConfigKeys::default();
    walk(&mut Vec::new(), &mut keys);
    keys
}

fn walk(path: &mut Vec<Step>, keys: &mut ConfigKeys) {
    match shape(path) {
        Shape::Value => {
            keys.values.insert(name(path));
        }
        Shape::Struct(fields) => {
            if !path.is_empty() {
                keys.sections.insert(name(path));
            }
            for field in fields {
                path.push(Step::Field(field));
                walk(path, keys);
                path.pop();
            }
        }
        Shape::Map => descend(path, Step::Name, keys),
        Shape::List => descend(path, Step::Item, keys),
    }
}

/// Into the entries of a map or list.
fn descend(path: &mut Vec<Step>, step: Step, keys: &mut ConfigKeys) {
    let container = name(path);
    path.push(step);
    if matches!(shape(path), Shape::Value) {
        // A map or list of plain values (`request_headers.set`) is one
        // key: its entries are data, not settings.
        path.pop();
        keys.values.insert(name(path));
    } else {
        keys.sections.insert(container);
        walk(path, keys);
        path.pop();
    }
}

fn shape(path: &[Step]) -> Shape {
    let depth = path.len();
    let Err((at, message)) = probe(path, json!({ PROBE: 1 })) else {
        // Anything goes here (`agent_service.letta.agent_template`).
        return Shape::Value;
    };
    if message.contains(&format!("unknown field `{PROBE}`")) {
        return Shape::Struct(expected_fields(&message));
    }
    if at > depth {
        return Shape::Map;
    }
    match probe(path, json!([{ PROBE: 1 }])) {
        Err((at, message))
            if at > depth && message.contains(&format!("unknown field `{PROBE}`")) =>
        {
            Shape::List
        }
        _ => Shape::Value,
    }
}

/// Deserializes `Settings` from a document holding `leaf` at `path`; on
/// error, how deep the error lies and serde's message.
fn probe(path: &[Step], leaf: Value) -> Result<(), (usize, String)> {
    let mut doc = leaf;
    for step in path.iter().rev() {
        doc = match step {
            Step::Field(field) => json!({ field: doc }),
            Step::Name => json!({ "NAME": doc }),
            Step::Item => json!([doc]),
        };
    }
    // JSON is YAML: the settings' own YAML deserializer reads the probe.
    let text = doc.to_string();
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, Settings>(de) {
        Ok(_) => Ok(()),
        Err(e) => Err((e.path().iter().count(), e.into_inner().to_string())),
    }
}

/// The field names of serde's "unknown field `x`, expected one of `a`,
/// `b`" (or "expected `a`", "expected `a` or `b`").
fn expected_fields(message: &str) -> Vec<String> {
    let Some((_, expected)) = message.split_once(", expected ") else {
        return Vec::new();
    };
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The dotted form of a path: `routes[].prefix`, `upstreams.NAME.tls`.
fn name(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Item => out.push_str("[]"),
            Step::Field(field) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(field);
            }
            Step::Name => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str("NAME");
            }
        }
    }
    out
}

/// Every metric family the gateway registers: the `register_*!` calls of
/// `src/metrics.rs`, by name, and whatever else the registry exports at
/// start-up (the process collector's metrics).
///
/// The source is read because a labelled metric without series yet (no
/// request has been answered, no upstream built) is registered but absent
/// from `gather()`, and the registry has no other way to list it.
pub fn metric_names() -> BTreeSet<String> {
    crate::metrics::init();
    let mut names: BTreeSet<String> = prometheus::gather()
        .iter()
        .map(|family| family.name().to_owned())
        .collect();
    names.extend(registered_names(include_str!("metrics.rs")));
    names
}

/// The first argument of every `register_…!(` macro call in `source`.
fn registered_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("register_") {
        rest = &rest[at + "register_".len()..];
        let macro_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let Some(args) = rest[macro_end..].strip_prefix("!(") else {
            continue;
        };
        if let Some(literal) = args.trim_start().strip_prefix('"')
            && let Some(end) = literal.find('"')
        {
            names.push(literal[..end].to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_find_sections_lists_maps_and_aliases() {
        let keys = config_keys();
        for key in [
            "listen",
            "chat.poll.jitter",
            "chat.async_result_ttl",
            "routes[].prefix",
            "routes[].request_headers.set",
            "upstreams.NAME.health_check.type",
            "agent_service.letta.agent_template",
        ] {
            assert!(keys.values.contains(key), "{key} missing: {keys:?}");
        }
        for section in ["chat.poll", "routes[]", "upstreams.NAME"] {
            assert!(keys.sections.contains(section), "{section}: {keys:?}");
        }
    }

    #[test]
    fn metric_names_include_series_less_vectors() {
        let names = metric_names();
        for name in [
            "eai_gateway_requests_total",
            "eai_gateway_upstream_retries_total",
            "process_cpu_seconds_total",
        ] {
            assert!(names.contains(name), "{name} missing: {names:?}");
        }
    }
}
