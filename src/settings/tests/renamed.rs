//! A renamed key is still read under its old name, with a warning; both
//! names at once are refused.

use std::io;
use std::sync::{Arc, Mutex};

use super::*;

/// What `f` logs, as the gateway's log lines.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

const OLD: &str = "agents.delete_upstream_on_delete";
const NEW: &str = "agents.delete_agent_on_delete";

#[test]
fn the_old_name_of_delete_agent_on_delete_is_read_with_a_warning() {
    let (s, log) = logged(|| {
        parse(&format!(
            "{MINIMAL}agents: {{delete_upstream_on_delete: true}}\n"
        ))
    });
    assert!(s.unwrap().mapping.delete_agent_on_delete);
    let warning = log
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning: {log:?}"));
    assert!(warning.contains(OLD) && warning.contains(NEW), "{warning}");
}

#[test]
fn the_new_name_is_read_without_a_warning() {
    let (s, log) = logged(|| {
        parse(&format!(
            "{MINIMAL}agents: {{delete_agent_on_delete: true}}\n"
        ))
    });
    assert!(s.unwrap().mapping.delete_agent_on_delete);
    assert!(!log.contains("WARN"), "{log}");
    assert!(!parse(MINIMAL).unwrap().mapping.delete_agent_on_delete);
}

#[test]
fn both_names_at_once_are_refused_naming_both() {
    for values in [
        "true, delete_agent_on_delete: true",
        "false, delete_agent_on_delete: true",
    ] {
        let text = format!("{MINIMAL}agents: {{delete_upstream_on_delete: {values}}}\n");
        let (err, log) = logged(|| parse(&text).unwrap_err());
        assert_eq!(err.key, OLD);
        assert_eq!(
            err.to_string(),
            format!("{OLD}: is the old name of {NEW}, which is given too: keep only {NEW}")
        );
        assert!(!log.contains("WARN"), "{log}");
    }
}

#[test]
fn every_renamed_key_is_a_dotted_key_of_a_section() {
    for (old, new) in crate::settings::renamed::RENAMED {
        let (old_section, _) = old.rsplit_once('.').unwrap();
        let (new_section, _) = new.rsplit_once('.').unwrap();
        assert_eq!(
            old_section, new_section,
            "{old} -> {new}: serde(alias) stays in one section"
        );
    }
}
