//! One behaviour, two paths: the same requests through the lean
//! pass-through path and through pingora-proxy (`lean_passthrough: false`)
//! reach the backend and the client byte for byte the same, apart from the
//! fields each request makes anew (`x-request-id`, `traceparent`, `date`).
//!
//! The backend is a raw socket that records each request header as it
//! arrived and answers from a script: plain, HEAD, a 1xx before the answer,
//! a close-delimited body, failing before and after its header, and
//! hop-by-hop fields both ways. Requests carrying hop-by-hop fields are
//! screened off the lean path, so for them this proves that the screen and
//! pingora-proxy's stripping give the backend the same header.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;

/// What the scripted backend answers for a path, as raw bytes; `None`
/// closes the connection without a byte.
fn script(path: &str) -> (Option<&'static [u8]>, bool) {
    match path {
        "/plain" => (
            Some(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: yes\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\r\nhello",
            ),
            false,
        ),
        "/info" => (
            Some(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ),
            false,
        ),
        "/close-delimited" => (
            Some(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nread until the close"),
            true,
        ),
        "/fail-before-header" => (None, true),
        "/fail-after-header" => (
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"),
            true,
        ),
        _ => (Some(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), false),
    }
}

/// A backend that records every request header it reads, raw.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = self.0.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let head = String::from_utf8_lossy(&head).into_owned();
                            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                            seen.lock().unwrap().push(head);
                            let (answer, close) = script(&path);
                            if let Some(answer) = answer {
                                let _ = socket.write_all(answer).await;
                            }
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The corpus: each request in one write, on a connection of its own.
fn corpus() -> Vec<(&'static str, String)> {
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: app.example\r\nAccept: */*\r\n{extra}\r\n")
    };
    let mut corpus = vec![
        ("GET", get("/plain", "")),
        (
            "HEAD",
            "HEAD /plain HTTP/1.1\r\nHost: app.example\r\n\r\n".to_owned(),
        ),
        (
            "GET, keep-alive named",
            get("/plain", "Connection: keep-alive\r\n"),
        ),
        ("GET, close asked", get("/plain", "Connection: close\r\n")),
        ("1xx before the answer", get("/info", "")),
        ("close-delimited body", get("/close-delimited", "")),
        (
            "backend fails before its header",
            get("/fail-before-header", ""),
        ),
        (
            "backend fails after its header",
            get("/fail-after-header", ""),
        ),
    ];
    // Hop-by-hop fields (RFC 9110 §7.6.1 and what proxies have used): none
    // of them may reach the backend, on either path.
    for field in [
        "Connection: keep-alive, X-Private\r\nX-Private: secret",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Proxy-Authenticate: Basic",
        "TE: trailers",
        "Trailer: X-Sum",
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    ] {
        corpus.push(("hop-by-hop field", get("/plain", &format!("{field}\r\n"))));
    }
    corpus
}

/// What the protocol fixes of a message stream: per header block, its
/// first line and its fields, names lower-cased (HTTP names no case) and in
/// name order (the order of fields of different names carries nothing);
/// then the body bytes. The fields each request makes anew
/// (`x-request-id`, `traceparent`, `date`) are masked.
fn normalize(text: &str) -> String {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\r\n\r\n") {
        let (head, tail) = rest.split_at(end);
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or("").to_owned();
        let mut fields: Vec<String> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let name = name.to_ascii_lowercase();
                match name.as_str() {
                    "x-request-id" | "traceparent" | "date" => format!("{name}: *"),
                    _ => format!("{name}:{value}"),
                }
            })
            .collect();
        fields.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
        let informational = first.starts_with("HTTP/1.1 1");
        out.push(first);
        out.extend(fields);
        out.push(String::new());
        rest = &tail[4..];
        if !informational {
            break;
        }
    }
    out.push(rest.to_owned());
    out.join("\r\n")
}

/// Sends `request` on a new connection; what came back until the gateway
/// closed it or went quiet for 400 ms.
async fn exchange(gw: &GatewayProcess, request: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(400), socket.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn gateway(
    db: &TestDb,
    backend: SocketAddr,
    lean: bool,
    log: std::path::PathBuf,
) -> GatewayProcess {
    let (_sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, db, sim_addr);
    spec.default_upstream = Some(backend.to_string());
    spec.extra_yaml = format!("lean_passthrough: {lean}\n");
    spec.log_file = Some(log);
    GatewayProcess::start(spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_path_and_pingora_proxy_give_client_and_backend_the_same_bytes() {
    let db = TestDb::new(DbKind::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let backend = recorder.start().await;
    let lean_log = dir.path().join("lean.log");
    let proxy_log = dir.path().join("proxy.log");
    let lean = gateway(&db, backend, true, lean_log.clone()).await;
    let proxied = gateway(&db, backend, false, proxy_log.clone()).await;

    let mut differences = Vec::new();
    for (what, request) in corpus() {
        let client_lean = normalize(&exchange(&lean, &request).await);
        let backend_lean: Vec<String> = recorder.take().iter().map(|h| normalize(h)).collect();
        let client_proxy = normalize(&exchange(&proxied, &request).await);
        let backend_proxy: Vec<String> = recorder.take().iter().map(|h| normalize(h)).collect();
        if client_lean != client_proxy {
            differences.push(format!(
                "{what}: the client got\n--- lean ---\n{client_lean}\n--- pingora-proxy ---\n{client_proxy}"
            ));
        }
        if backend_lean != backend_proxy {
            differences.push(format!(
                "{what}: the backend saw\n--- lean ---\n{backend_lean:?}\n--- pingora-proxy ---\n{backend_proxy:?}"
            ));
        }
        for head in &backend_lean {
            let lower = head.to_ascii_lowercase();
            for hop in [
                "x-private",
                "keep-alive:",
                "proxy-connection",
                "proxy-authorization",
                "proxy-authenticate",
                "\r\nte:",
                "trailer:",
                "http2-settings",
                "connection:",
            ] {
                assert!(
                    !lower.contains(hop),
                    "{what}: `{hop}` reached the backend:\n{head}"
                );
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));

    // Not vacuous: the plain requests did take the lean path on the one
    // gateway, and none did on the other.
    let n = corpus().len();
    let passed = |log| async move {
        access_lines_settled(log, n, |(route, _)| route.starts_with("upstream:"))
            .await
            .into_iter()
            .map(|(_, via)| via)
            .collect::<Vec<String>>()
    };
    let lean_vias = passed(&lean_log).await;
    assert!(
        lean_vias.iter().filter(|v| *v == "lean").count() == 8,
        "{lean_vias:?}"
    );
    let proxy_vias = passed(&proxy_log).await;
    assert!(
        proxy_vias.len() == corpus().len() && proxy_vias.iter().all(|v| v == "pingora-proxy"),
        "{proxy_vias:?}"
    );
}
