//! Which changes a reload takes and which need a restart.

use super::*;

#[test]
fn restart_only_changes_are_named_and_the_rest_reloads() {
    let base = parse(MINIMAL).unwrap();
    let reloadable = parse(&format!(
        "{MINIMAL}  token: rotated\n  request_timeout_ms: 5000\nchat:\n  timeout_seconds: 9\n\
         limits:\n  user_rate_per_min: 3\nupstreams:\n  a:\n    backends: [\"127.0.0.1:1\"]\n\
         routes:\n  - prefix: /a\n    upstream: a\n"
    ))
    .unwrap();
    assert!(base.restart_only_changes(&reloadable).is_empty());
    let moved = parse(
        "listen: 127.0.0.1:1\nthreads: 3\nagent_service:\n  dialect: letta\n  url: http://127.0.0.1:9\n\
         database:\n  url: sqlite://other.db\nagents:\n  cache_capacity: 5\nusers:\n  pseudonym_key: another-key-123\n",
    )
    .unwrap();
    assert_eq!(
        base.restart_only_changes(&moved),
        [
            "listen",
            "threads",
            "database",
            "agent_service.dialect",
            "agents.cache_capacity",
            "users"
        ]
    );
}
