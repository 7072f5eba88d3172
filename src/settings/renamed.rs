//! Keys that were renamed. A file written for an older release keeps
//! working: the old name is read as a serde alias of the field, and every
//! load says, as a warning naming both keys, what to write instead. A file
//! that gives both names is refused, since it would say two things about
//! one setting.

use serde_yaml_ng::Value;

use super::ConfigError;

/// `(old, new)`, dotted; each old name is also a `serde(alias)` of the field.
pub(crate) const RENAMED: &[(&str, &str)] = &[
    // It deletes the user's agent; "upstream" means a pass-through backend.
    (
        "agents.delete_upstream_on_delete",
        "agents.delete_agent_on_delete",
    ),
];

/// The old names `text` uses, as `(old, new)`; an error naming both keys
/// when it also gives the new one.
pub(crate) fn old_names_in(text: &str) -> Result<Vec<(&'static str, &'static str)>, ConfigError> {
    // A text that is not YAML is reported by the typed parse, which can say
    // where.
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(text) else {
        return Ok(Vec::new());
    };
    let given = |key: &str| {
        key.split('.')
            .try_fold(&doc, |value, part| value.get(part))
            .is_some()
    };
    let mut used = Vec::new();
    for &(old, new) in RENAMED {
        if given(old) {
            if given(new) {
                return Err(ConfigError::new(
                    old,
                    format!("is the old name of {new}, which is given too: keep only {new}"),
                ));
            }
            used.push((old, new));
        }
    }
    Ok(used)
}

/// Said on every load, so that a reload keeps reminding.
pub(crate) fn warn(old: &str, new: &str) {
    tracing::warn!(
        old_key = old,
        new_key = new,
        "{old} is deprecated and read as {new}: rename it to {new}."
    );
}
