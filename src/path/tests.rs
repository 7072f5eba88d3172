use super::*;

fn norm(raw: &str) -> Result<String, String> {
    normalize(raw.as_bytes(), &PathSettings::default())
        .map(|t| t.origin_form().to_owned())
        .map_err(|e| e.detail)
}

#[test]
fn canonical_paths_are_unchanged() {
    for p in [
        "/",
        "/api/x",
        "/api/x/",
        "/eai-gateway/chat",
        "/eai-gateway/agent/%2B5521999999999",
        "/a?b=%2F&c=..",
        "/v1/health/",
        "/files/%C3%A9t%C3%A9",
    ] {
        assert_eq!(norm(p).as_deref(), Ok(p), "{p}");
    }
}

#[test]
fn spellings_of_native_routes_become_the_route() {
    for (raw, want) in [
        ("/%65ai-gateway/chat", "/eai-gateway/chat"),
        ("/%65%61%69-gateway/chat", "/eai-gateway/chat"),
        ("//eai-gateway/chat", "/eai-gateway/chat"),
        ("/eai-gateway//chat", "/eai-gateway/chat"),
        ("http://x//eai-gateway/chat", "/eai-gateway/chat"),
        ("HTTP://x/eai-gateway/chat?a=1", "/eai-gateway/chat?a=1"),
        ("/./eai-gateway/chat", "/eai-gateway/chat"),
        ("/x/../eai-gateway/chat", "/eai-gateway/chat"),
        ("/x/%2E%2E/eai-gateway/chat", "/eai-gateway/chat"),
        ("/../../eai-gateway/chat", "/eai-gateway/chat"),
        ("/eai-gateway/chat/", "/eai-gateway/chat"),
        (
            "/%65ai-gateway/agent/5521999990001",
            "/eai-gateway/agent/5521999990001",
        ),
        ("/eai-gateway/agent/%2b5521", "/eai-gateway/agent/%2B5521"),
        ("/eai-gateway/chat#frag", "/eai-gateway/chat"),
    ] {
        assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn encoded_separators_nul_and_variants_are_refused() {
    for raw in [
        "/eai-gateway%2Fchat",
        "/eai-gateway%2fchat",
        "/eai-gateway%5Cchat",
        "/eai-gateway\\chat",
        "/api%2Fx",
        "/a%00b",
        "/a%zz",
        "/a%4",
        "/EAI-GATEWAY/chat",
        "/Eai-Gateway/agent/5521",
        "/eai-gateway;x/chat",
        "/eai-gateway/chat;x=1",
        "/x/..;/eai-gateway/chat",
        "/eai-gateway/agent/%FF",
        "example.com:443",
        "ftp://x/eai-gateway/chat",
    ] {
        assert!(norm(raw).is_err(), "{raw} accepted as {:?}", norm(raw));
    }
}

#[test]
fn options_keep_what_the_config_allows() {
    let keep = PathSettings {
        merge_slashes: false,
        encoded_separators: EncodedSeparators::Keep,
    };
    let n = |raw: &str| normalize(raw.as_bytes(), &keep).map(|t| t.path().to_owned());
    assert_eq!(n("/a%2fb").ok().as_deref(), Some("/a%2Fb"));
    assert_eq!(n("/a\\b").ok().as_deref(), Some("/a%5Cb"));
    assert_eq!(n("//a//b").ok().as_deref(), Some("//a//b"));
    // Unmerged slashes still cannot reach a backend as a native route.
    assert!(n("//eai-gateway/chat").is_err());
    assert!(n("/eai-gateway%2Fchat").is_err());
}

#[test]
fn dot_segments_follow_rfc_3986() {
    for (raw, want) in [
        ("/a/b/c/./../../g", "/a/g"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("http://h", "/"),
        ("http://h?q", "/?q"),
        ("/%7Euser/%41", "/~user/A"),
        ("/caf\u{e9}", "/caf%C3%A9"),
    ] {
        assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn plain_targets_are_marked_unchanged() {
    let t = |raw: &str| normalize(raw.as_bytes(), &PathSettings::default()).unwrap();
    for raw in [
        "/",
        "/a/b/",
        "/a?x=%2F",
        "/eai-gateway/chat",
        "/v1/runs/r-1?order=asc",
    ] {
        assert!(!t(raw).changed, "{raw}");
    }
    for raw in [
        "//a",
        "/a/./b",
        "/%61",
        "http://h/a",
        "/a#f",
        "/caf\u{e9}",
        "/eai-gateway/chat/",
    ] {
        assert!(t(raw).changed, "{raw}");
    }
}

/// The front's quick decision agrees with the full reading on every
/// spelling, native or not, plain or not.
#[test]
fn the_quick_native_check_agrees_with_normalising() {
    let rules = PathSettings::default();
    for raw in [
        "/",
        "/api/x",
        "/api/x/?q=1",
        "/static/a.css",
        "/sim/payload?bytes=1024",
        "/eai-gateway/chat",
        "/eai-gateway/chat/",
        "/EAI-gateway/chat",
        "/eai-gatewayx",
        "/%65ai-gateway/chat",
        "//eai-gateway/chat",
        "/x/../eai-gateway/chat",
        "/healthz",
        "/Healthz",
        "/readyz/",
        "/a%2Fb",
        "/a\\b",
        "/a;b",
        "*",
        "http://h/eai-gateway/chat",
        "http://h/api",
        "weird",
        "/x/./y",
        "/files/%C3%A9",
        "/eai-gateway/agent/%2B5521",
        "/api/eai-gateway",
        "/api/readyz?x",
    ] {
        let full = normalize(raw.as_bytes(), &rules).map_or(true, |t| is_native_path(t.path()));
        assert_eq!(
            is_native_target(raw.as_bytes(), || rules.clone()),
            full,
            "{raw}"
        );
    }
}

#[test]
fn plain_means_no_segment_to_resolve_and_nothing_to_decode() {
    for (path, plain) in [
        ("/", true),
        ("/a", true),
        ("/a/", true),
        ("/a/b.c/..d", true),
        ("/sim/payload", true),
        ("", false),
        ("a", false),
        ("//", false),
        ("/a//b", false),
        ("/.", false),
        ("/..", false),
        ("/a/./b", false),
        ("/a/../b", false),
        ("/a/..", false),
        ("/a%2fb", false),
        ("/a\\b", false),
        ("/a;p", false),
        ("/a b", false),
        ("/caf\u{e9}", false),
    ] {
        assert_eq!(is_plain(path.as_bytes()), plain, "{path:?}");
    }
}
