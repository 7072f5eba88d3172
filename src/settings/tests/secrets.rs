//! No secret of the settings shows in their `Debug` form.

use super::*;

#[test]
fn debug_of_settings_shows_no_secret() {
    const FILE: &str = "agent_service:\n  dialect: eai\n  url: 'http://agent-user:AGENT-URL-PW@127.0.0.1:9/base'\n  \
         token: AGENT-TOKEN-SECRET\n\
         users: {pseudonym_key: PSEUDONYM-KEY-SECRET}\n\
         database: {url: 'postgres://db-user:DB-URL-PW@db:5432/x?sslmode=require&password=DB-PARAM-PW', \
         direct_url: 'postgres://db-user:DIRECT-URL-PW@db-direct:5432/x'}\n\
         limits: {redis_url: 'redis://redis-user:REDIS-URL-PW@redis:6379/0'}\n\
         upstreams: {a: {backends: ['127.0.0.1:1']}}\n\
         routes: [{upstream: a, request_headers: {set: {Authorization: 'Bearer HEADER-SECRET'}}}]\n";
    let tokens = |k: &str| match k {
        env::TOKENS => Some("BEARER-TOKEN-SECRET".to_owned()),
        env::METRICS_TOKENS => Some("METRICS-TOKEN-SECRET".to_owned()),
        _ => None,
    };
    let settings = Settings::parse(FILE, tokens).unwrap();
    for shown in [format!("{settings:?}"), format!("{settings:#?}")] {
        for secret in [
            "AGENT-URL-PW",
            "AGENT-TOKEN-SECRET",
            "PSEUDONYM-KEY-SECRET",
            "DB-URL-PW",
            "DB-PARAM-PW",
            "DIRECT-URL-PW",
            "REDIS-URL-PW",
            "HEADER-SECRET",
            "BEARER-TOKEN-SECRET",
            "METRICS-TOKEN-SECRET",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // Still a description of the settings, not a blank.
        for kept in [
            "agent-user@127.0.0.1:9/base",
            "postgres://db:5432/x",
            "postgres://db-direct:5432/x",
            "redis:6379",
        ] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
    }
    let shown = format!("{settings:?}");
    for mark in [
        "token: Some(<redacted>)",
        "pseudonym_key: <redacted>",
        "\"Authorization\": <redacted>",
        "TokenSet(1 tokens)",
    ] {
        assert!(shown.contains(mark), "{mark} missing from {shown}");
    }
}

#[test]
fn a_database_url_shows_its_host_and_database_only() {
    for (url, shown) in [
        ("postgres://u:pw@db:5432/x", "postgres://db:5432/x"),
        ("postgresql://db/x?password=pw", "postgresql://db/x"),
        ("postgres://u:p@ss@db/x", "postgres://db/x"),
        ("postgres://db", "postgres://db"),
        // The user part is not where the parser looks: nothing is shown.
        ("postgres://u:1234/pw@db/x", "postgres://<redacted>"),
        ("postgres://u:p#w@db/x", "postgres://<redacted>"),
        ("sqlite://eai-gateway.db", "sqlite://eai-gateway.db"),
    ] {
        let url = DatabaseUrl::parse(url).unwrap();
        assert_eq!(url.redacted(), shown);
        assert_eq!(format!("{url:?}"), shown);
    }
}

#[test]
fn debug_of_redis_cluster_urls_shows_the_addresses_only() {
    let file = format!(
        "{MINIMAL}limits: {{redis_cluster_urls: \
         ['redis://u:CLUSTER-PW@10.0.0.1:7000/0', 'redis://u:CLUSTER-PW@10.0.0.2:7000']}}\n"
    );
    let settings = parse(&file).unwrap();
    for shown in [format!("{settings:?}"), format!("{settings:#?}")] {
        assert!(!shown.contains("CLUSTER-PW"), "{shown}");
    }
    let shown = format!("{settings:?}");
    assert!(
        shown.contains("redis_cluster_urls: Some([redis://10.0.0.1:7000, redis://10.0.0.2:7000])"),
        "{shown}"
    );
}
