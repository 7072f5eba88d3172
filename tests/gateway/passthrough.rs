//! Everything outside the native routes is proxied unchanged to the upstream
//! the route table picks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::support::*;

/// Echoes what it received: method, path, query and selected headers in
/// response headers, the body byte for byte.
async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut resp = Response::new(Body::from(body.clone()));
    let h = resp.headers_mut();
    let put = |h: &mut HeaderMap, k: &'static str, v: String| {
        h.insert(
            k,
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("?")),
        );
    };
    put(h, "x-seen-method", parts.method.to_string());
    put(h, "x-seen-uri", parts.uri.to_string());
    for (from, to) in [
        ("x-forwarded-for", "x-seen-xff"),
        ("x-forwarded-proto", "x-seen-proto"),
        ("x-custom", "x-seen-custom"),
        ("x-remove-me", "x-seen-remove-me"),
        ("host", "x-seen-host"),
    ] {
        if let Some(v) = parts.headers.get(from) {
            h.insert(to, v.clone());
        }
    }
    put(h, "x-seen-sha256", hex::encode(Sha256::digest(&body)));
    put(h, "x-backend", "main".into());
    resp
}

/// Five 1 KiB chunks, 300 ms apart.
async fn slow() -> Response {
    Response::new(Body::from_stream(slow_chunks(1024)))
}

/// Five 10-byte pieces, 300 ms apart, with their length announced: far less
/// than a write buffer, so only a flush per piece shows them in time.
async fn slow_with_length() -> Response {
    let mut resp = Response::new(Body::from_stream(slow_chunks(10)));
    resp.headers_mut()
        .insert("content-length", HeaderValue::from_static("50"));
    resp
}

fn slow_chunks(size: usize) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(0u32, move |i| async move {
        if i == 5 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size])),
            i + 1,
        ))
    })
}

async fn backend(tag: &'static str) -> SocketAddr {
    // Paths pass through unchanged, so match on the tail: `/api/tag` and
    // `/tag` both name the backend.
    let app = Router::new()
        .route("/slow", get(slow))
        .route("/slow-length", get(slow_with_length))
        .fallback(any(move |req: Request| async move {
            if req.uri().path().ends_with("/tag") {
                Response::new(Body::from(tag))
            } else if req.uri().path().ends_with("/late") {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Response::new(Body::from("late"))
            } else {
                echo(req).await
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn gateway_with_default(db: &TestDb, up: String, extra: &str) -> GatewayProcess {
    let (_sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, db, sim_addr);
    spec.default_upstream = Some(up);
    spec.extra_yaml = extra.to_owned();
    GatewayProcess::start(spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_1mib_post_pass_through_byte_exact() {
    let be = backend("main").await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_with_default(&db, be.to_string(), "").await;
    let client = reqwest::Client::new();

    let r = client
        .get(gw.url("/some/page?q=1&x=%20y"))
        .header("x-custom", "kept")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-seen-method"], "GET");
    assert_eq!(r.headers()["x-seen-uri"], "/some/page?q=1&x=%20y");
    assert_eq!(r.headers()["x-seen-custom"], "kept");
    assert_eq!(r.headers()["x-seen-xff"], "203.0.113.7, 127.0.0.1");
    assert_eq!(r.headers()["x-seen-proto"], "http");

    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let sent_sha = hex::encode(Sha256::digest(&body));
    let r = client
        .post(gw.url("/upload/blob"))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-seen-method"], "POST");
    assert_eq!(
        r.headers()["x-seen-sha256"].to_str().unwrap(),
        sent_sha,
        "request body changed"
    );
    let back = r.bytes().await.unwrap();
    assert_eq!(back.len(), body.len());
    assert!(back[..] == body[..], "response body changed");
}

/// Each piece of a slow answer reaches the client when the backend sends
/// it, chunked or with a `Content-Length`: a proxy that buffered would hold
/// the header and the body back until the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_streamed_response_arrives_in_pieces() {
    let be = backend("main").await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_with_default(&db, be.to_string(), "").await;
    for (path, size) in [("/slow", 1024), ("/slow-length", 10)] {
        let started = Instant::now();
        let mut r = reqwest::get(gw.url(path)).await.unwrap();
        let header = started.elapsed();
        assert_eq!(r.status(), 200);
        let mut arrivals = Vec::new();
        while let Some(chunk) = r.chunk().await.unwrap() {
            arrivals.push((started.elapsed(), chunk.len()));
        }
        let total: usize = arrivals.iter().map(|a| a.1).sum();
        assert_eq!(total, 5 * size, "{path}");
        let first = arrivals.first().unwrap().0;
        let last = arrivals.last().unwrap().0;
        // The backend sends its header and first piece at once, then spends
        // ~1.2 s on the other four.
        assert!(
            header < Duration::from_millis(250) && first < Duration::from_millis(250),
            "{path}: header after {header:?}, first byte after {first:?}"
        );
        assert!(
            last - first >= Duration::from_millis(800),
            "{path}: pieces arrived together: {arrivals:?}"
        );
    }
}

/// A chunked backend answer reaches an HTTP/1.0 client unframed, ended by
/// the close: chunk sizes inside its body would corrupt it (RFC 9112 §6.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_never_gets_a_chunked_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let be = backend("main").await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_with_default(&db, be.to_string(), "").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the connection ends with the body")
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body.len(), 5 * 1024, "{head}");
    assert!(body.iter().all(|&b| b == b'x'), "chunk framing in the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_sends_prefixes_to_their_upstreams() {
    let main = backend("main").await;
    let other = backend("other").await;
    let db = TestDb::new(DbKind::Sqlite);
    let extra = format!(
        "upstreams:\n  other:\n    backends: ['{other}']\n    connect_timeout_ms: 500\n    read_timeout_ms: 5000\n\
         routes:\n  - prefix: /api\n    upstream: other\n"
    );
    let gw = gateway_with_default(&db, main.to_string(), &extra).await;
    let text = |path: &'static str| {
        let url = gw.url(path);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    assert_eq!(text("/api/tag").await, "other");
    assert_eq!(text("/apix/tag").await, "main");
    assert_eq!(text("/tag").await, "main");
}

/// Route rules for a real stack: host routes (exact and wildcard), a
/// stripped prefix, request and response headers set and removed, a body
/// bound and a timeout, each checked at the backend or the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rules_match_hosts_strip_prefixes_edit_headers_and_bound_requests() {
    let main = backend("main").await;
    let api = backend("api").await;
    let db = TestDb::new(DbKind::Sqlite);
    let extra = [
        format!("upstreams:\n  api: {{backends: ['{api}']}}\n  web: {{backends: ['{main}']}}\n"),
        "routes:\n".to_owned(),
        "  - {host: api.example.com, upstream: api}\n".to_owned(),
        "  - host: '*.tenant.example.com'\n    prefix: /app\n    upstream: web\n".to_owned(),
        "    strip_prefix: true\n".to_owned(),
        "    request_headers: {set: {x-custom: from-route}, remove: [x-remove-me]}\n".to_owned(),
        "    response_headers: {set: {x-frame-options: DENY}, remove: [x-backend]}\n".to_owned(),
        "  - {prefix: /upload, upstream: web, max_body_bytes: 1000}\n".to_owned(),
        "  - {prefix: /slow, upstream: web, timeout_ms: 300}\n".to_owned(),
    ]
    .concat();
    let gw = gateway_with_default(&db, main.to_string(), &extra).await;
    let client = reqwest::Client::new();
    let get = |path: &str, host: &str| client.get(gw.url(path)).header("host", host).send();

    // Hosts: exact (any case, any port), else the default upstream.
    for host in ["api.example.com", "API.Example.com:8080"] {
        let r = get("/tag", host).await.unwrap();
        assert_eq!(r.text().await.unwrap(), "api", "{host}");
    }
    let r = get("/tag", "www.example.com").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "main");

    // Wildcard host with a stripped prefix and header edits.
    let r = client
        .get(gw.url("/app/orders/7?full=1"))
        .header("host", "shop.tenant.example.com")
        .header("x-custom", "from-client")
        .header("x-remove-me", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-seen-uri"], "/orders/7?full=1");
    assert_eq!(h["x-seen-custom"], "from-route");
    assert!(!h.contains_key("x-seen-remove-me"), "{h:?}");
    assert_eq!(h["x-seen-host"], "shop.tenant.example.com");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(!h.contains_key("x-backend"), "{h:?}");
    // The bare domain is not under the wildcard: default, path unchanged.
    let r = get("/app/orders/7", "tenant.example.com").await.unwrap();
    assert_eq!(r.headers()["x-seen-uri"], "/app/orders/7");
    assert_eq!(r.headers()["x-backend"], "main");

    // A body bound: declared too large, refused before its body is read;
    // chunked too large, refused once past the bound; within it, passed.
    let r = client
        .post(gw.url("/upload/file"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 600]))),
    );
    let r = client
        .post(gw.url("/upload/stream"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client
        .post(gw.url("/upload/small"))
        .body(vec![b'z'; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 900);

    // A timeout: the backend takes 3 s, the route allows 300 ms.
    let started = Instant::now();
    let r = get("/slow/late", "t").await.unwrap();
    assert_eq!(r.status(), 504);
    let detail = r.json::<Value>().await.unwrap()["detail"].to_string();
    assert!(detail.contains("web"), "{detail}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_backends() {
    let a = backend("a").await;
    let b = backend("b").await;
    let db = TestDb::new(DbKind::Sqlite);
    let extra = format!(
        "upstreams:\n  pair:\n    backends: ['{a}', '{b}']\nroutes:\n  - prefix: /rr\n    upstream: pair\n"
    );
    let (_sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = extra;
    let gw = GatewayProcess::start(spec).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let t = reqwest::get(gw.url("/rr/tag"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        *seen.entry(t).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_502_with_json_detail() {
    let db = TestDb::new(DbKind::Sqlite);
    let closed = format!("127.0.0.1:{}", free_port());
    let gw = gateway_with_default(&db, closed.clone(), "").await;
    let r = reqwest::get(gw.url("/anything")).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: Value = r.json().await.unwrap();
    // What happened and where, not Pingora's error type name.
    assert_eq!(
        body["detail"],
        format!("upstream default failed: connection refused ({closed})"),
        "{body}"
    );
}

/// A gateway with a live simulator behind its native routes and the echo
/// backend as its default upstream.
async fn chatting_gateway(db: &TestDb) -> (eai_gateway::sim::Simulator, GatewayProcess) {
    let up = backend("main").await;
    let (sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, db, sim_addr);
    spec.default_upstream = Some(up.to_string());
    (sim, GatewayProcess::start(spec).await)
}

/// Reads one HTTP/1.1 response with a Content-Length body off a raw stream.
async fn read_response(
    s: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    s.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        s.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("length"))
        .expect("content-length");
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.expect("body");
    (status, headers, body)
}

/// A keep-alive connection to the gateway, read through a buffer.
async fn raw_connection(gw: &GatewayProcess) -> tokio::io::BufReader<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tokio::io::BufReader::new(tcp)
}

/// A whole chat request as raw HTTP/1.1.
fn raw_chat(user: &str) -> String {
    let chat = format!(r#"{{"user_number":"{user}","message":"oi"}}"#);
    format!(
        "POST /eai-gateway/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{chat}",
        chat.len()
    )
}

/// Requests pipelined behind a native one (all in one write, RFC 9112
/// §9.3.2) are all answered, in order, whichever path each takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_behind_a_native_one_are_all_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, gw) = chatting_gateway(&db).await;
    let mut s = raw_connection(&gw).await;
    let pipelined = [
        raw_chat("5521987650002"),
        "GET /eai-gateway/agent/5521987650002 HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        "GET /api/tag HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
    ]
    .concat();
    s.get_mut()
        .write_all(pipelined.as_bytes())
        .await
        .expect("write");
    let mut answers = Vec::new();
    for _ in 0..4 {
        let answer = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
            .await
            .expect("every pipelined request is answered");
        answers.push(answer);
    }
    let body = |i: usize| String::from_utf8_lossy(&answers[i].2).into_owned();
    assert_eq!(answers[0].0, 200, "{}", body(0));
    let agent = answering_agent(&serde_json::from_str(&body(0)).expect("json"));
    assert_eq!(answers[1].0, 200);
    assert!(body(1).contains(&agent), "{}", body(1));
    assert_eq!(answers[2].0, 200, "{}", body(2));
    assert_eq!((answers[3].0, body(3)), (200, "main".to_owned()));
}

/// Requests pipelined behind a proxied one, whether they arrive with its
/// header or with its body, are all answered in order (RFC 9112 §9.3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_behind_a_proxied_one_are_all_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, gw) = chatting_gateway(&db).await;
    // All in one write; then the next request behind a body that arrives
    // after its header, so that Pingora reads it with the body.
    let all_at_once = [
        "GET /api/tag HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    ]
    .concat();
    let behind_a_body = [
        "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n",
        "hello",
        "GET /api/tag HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    let mut s = raw_connection(&gw).await;
    s.get_mut()
        .write_all(all_at_once.as_bytes())
        .await
        .expect("write");
    let answered = answered_or_closed(&mut s, &[(200, "main"), (200, "hello"), (200, "")]).await;
    assert_eq!(answered, 3, "all three in one read are answered");
    let mut s = raw_connection(&gw).await;
    s.get_mut()
        .write_all(behind_a_body[0].as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.get_mut()
        .write_all(behind_a_body[1..].concat().as_bytes())
        .await
        .expect("write");
    let answered = answered_or_closed(&mut s, &[(200, "hello"), (200, "main")]).await;
    assert_eq!(answered, 2, "the request read with a body is answered");
    // A bodiless request whose next one arrives while the backend is still
    // answering: Pingora reads that one while watching the client.
    let mut s = raw_connection(&gw).await;
    s.get_mut()
        .write_all(b"GET /slow-length HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.get_mut()
        .write_all(b"GET /api/echo HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let within = Duration::from_secs(10);
    let (status, _, body) = tokio::time::timeout(within, read_response(&mut s))
        .await
        .expect("the slow answer");
    assert_eq!((status, body.len()), (200, 50));
    // Whole: the byte Pingora read while watching the client opens it.
    let (status, headers, _) = tokio::time::timeout(within, read_response(&mut s))
        .await
        .expect("the request sent during the answer is answered");
    let method = headers.iter().find(|(k, _)| k == "x-seen-method");
    assert_eq!(
        (status, method.map(|(_, v)| v.as_str())),
        (200, Some("GET")),
        "{headers:?}"
    );
}

/// Reads the answers to `expected` (status, body unless empty) in order
/// until one says `Connection: close`, after which the connection must
/// close; how many were answered.
async fn answered_or_closed(
    s: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    expected: &[(u16, &str)],
) -> usize {
    use tokio::io::AsyncReadExt;
    for (i, (status, body)) in expected.iter().enumerate() {
        let (got, headers, got_body) =
            tokio::time::timeout(Duration::from_secs(10), read_response(s))
                .await
                .unwrap_or_else(|_| panic!("request {i} neither answered nor refused"));
        assert_eq!(
            got,
            *status,
            "request {i}: {headers:?} {}",
            String::from_utf8_lossy(&got_body)
        );
        if !body.is_empty() {
            assert_eq!(String::from_utf8_lossy(&got_body), *body, "request {i}");
        }
        let closes = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        if closes {
            let mut rest = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .expect("the connection closes after Connection: close")
                .expect("read");
            assert_eq!(n, 0, "bytes after a Connection: close response");
            return i + 1;
        }
    }
    expected.len()
}

/// Native and proxied requests take different paths inside the gateway
/// (decided from the first read of each request); one keep-alive connection
/// carrying both, in any order, gets every answer right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_alternates_native_and_proxied_requests() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, gw) = chatting_gateway(&db).await;
    let mut s = raw_connection(&gw).await;
    let requests = [
        "GET /api/tag HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        raw_chat("5521987650001"),
        "GET /api/tag HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        "GET /eai-gateway/agent/5521987650001 HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_owned(),
    ];
    let mut answers = Vec::new();
    for req in &requests {
        s.get_mut().write_all(req.as_bytes()).await.expect("write");
        answers.push(read_response(&mut s).await);
    }
    let body = |i: usize| String::from_utf8_lossy(&answers[i].2).into_owned();
    assert_eq!((answers[0].0, body(0)), (200, "main".to_owned()));
    assert_eq!(answers[1].0, 200, "{}", body(1));
    let agent = answering_agent(&serde_json::from_str(&body(1)).expect("json"));
    assert_eq!((answers[2].0, body(2)), (200, "main".to_owned()));
    assert_eq!(answers[3].0, 200);
    assert!(body(3).contains(&agent), "{}", body(3));
    assert_eq!(answers[4].0, 200);
    assert_eq!((answers[5].0, body(5)), (200, "hello".to_owned()));
    // Native answers carry a request id like proxied ones do.
    for (status, headers, _) in &answers {
        assert!(
            headers.iter().any(|(k, _)| k == "x-request-id"),
            "{status} without x-request-id"
        );
    }
}

/// A request line split across reads is routed by pingora-proxy, which
/// serves native routes too: the chat is answered all the same, and the
/// access line says which path served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_in_pieces_is_still_served() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(DbKind::Sqlite);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("gw.log");
    let up = backend("main").await;
    let (_sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.default_upstream = Some(up.to_string());
    spec.log_file = Some(log.clone());
    let gw = GatewayProcess::start(spec).await;
    let chat = r#"{"user_number":"5521987650002","message":"oi"}"#;
    let req = format!(
        "POST /eai-gateway/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{chat}",
        chat.len()
    );
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut s = tokio::io::BufReader::new(tcp);
    for piece in [&req[..7], &req[7..30], &req[30..]] {
        s.get_mut()
            .write_all(piece.as_bytes())
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        answer_text(&serde_json::from_slice(&body).expect("json")),
        "echo: oi"
    );
    // The same request in one piece takes the front's lean native path.
    let mut whole = raw_connection(&gw).await;
    whole
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .expect("write");
    assert_eq!(read_response(&mut whole).await.0, 200);
    let chats: Vec<String> =
        access_lines_settled(&log, 2, |(route, _)| route == "/eai-gateway/chat")
            .await
            .into_iter()
            .map(|(_, via)| via)
            .collect();
    assert_eq!(chats, ["pingora-proxy", "lean"]);
}

/// A backend that answers the first request on each connection and closes
/// the connection when the next one arrives, unanswered: a backend whose
/// idle timeout ran out just as the gateway reused its pooled connection.
async fn one_answer_per_connection_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // The next request on this connection: closed unanswered.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// Every GET is answered although each reused backend connection closes
/// under it: the request goes again on a new connection, as no backend
/// answered any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_costs_no_request() {
    let db = TestDb::new(DbKind::Sqlite);
    let be = one_answer_per_connection_backend().await;
    let gw = gateway_with_default(&db, be.to_string(), "").await;
    let client = reqwest::Client::new();
    for i in 0..5 {
        let r = client.get(gw.url("/again")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
}

/// A client that closes its connection while the backend is still
/// working: the gateway drops its backend connection then, not when the
/// answer comes (nobody would read it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_answer_frees_the_backend_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let asked = Instant::now();
        // The answer would take 10 s; the gateway's close comes first.
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        let _ = closed_tx.send(closed.is_ok().then(|| asked.elapsed()));
    });
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_with_default(&db, be.to_string(), "").await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /slow-answer HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    let closed = closed_rx.await.unwrap();
    assert!(
        closed.is_some_and(|after| after < Duration::from_secs(5)),
        "backend connection closed after {closed:?}"
    );
}
