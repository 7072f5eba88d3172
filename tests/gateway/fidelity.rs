//! What passes through unchanged, checked against real servers: WebSocket
//! upgrades, server-sent events, a 500 MB download in flat memory, a backend
//! dying mid-body, `Expect: 100-continue`, chunked uploads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::sse::{Event, Sse};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::support::*;

async fn gateway_to(db: &TestDb, backend: SocketAddr) -> GatewayProcess {
    let (_sim, agent) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, db, agent);
    spec.default_upstream = Some(backend.to_string());
    GatewayProcess::start(spec).await
}

/// Resident memory of a process, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A WebSocket echo server.
async fn websocket_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_carries_100_messages_of_1_mib() {
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_to(&db, websocket_echo().await).await;
    let url = format!("ws://{}/socket", gw.addr);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20));
    let (mut ws, response) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .expect("upgrade through the gateway");
    assert_eq!(response.status(), 101);
    for i in 0..100u32 {
        let mut payload = vec![(i % 251) as u8; 1 << 20];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        ws.send(Message::binary(payload.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("no error");
        assert_eq!(
            echoed.into_data().as_ref(),
            payload.as_slice(),
            "message {i}"
        );
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_before_the_stream_ends() {
    let app = axum::Router::new().fallback(|| async {
        let events = futures_util::stream::unfold(0u32, |i| async move {
            if i == 5 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Some((
                Ok::<_, std::convert::Infallible>(Event::default().data(format!("tick {i}"))),
                i + 1,
            ))
        });
        Sse::new(events)
    });
    let backend = serve(app).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_to(&db, backend).await;
    let started = Instant::now();
    let mut r = reqwest::get(gw.url("/events")).await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let first = r.chunk().await.unwrap().expect("an event");
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("tick 0"));
    let mut rest = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let end_at = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("tick 4"));
    // The stream takes 1.6 s; its first event must not wait for the end.
    assert!(
        first_at < Duration::from_millis(500) && end_at > Duration::from_millis(1400),
        "first event after {first_at:?}, end after {end_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_mb_download_passes_in_flat_memory() {
    let _heavy = HEAVY.lock().await;
    const TOTAL: usize = 500 << 20;
    const CHUNK: usize = 256 << 10;
    let app = axum::Router::new().fallback(|| async {
        let chunk = Bytes::from(vec![b'd'; CHUNK]);
        let body = futures_util::stream::iter(
            (0..TOTAL / CHUNK).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        );
        let mut resp = axum::response::Response::new(Body::from_stream(body));
        resp.headers_mut()
            .insert("content-length", TOTAL.to_string().parse().unwrap());
        resp
    });
    let backend = serve(app).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_to(&db, backend).await;
    let pid = gw.child.id();
    // Warm: the first proxied request allocates the connection pools.
    let _ = reqwest::get(gw.url("/healthz")).await.unwrap();
    let before = rss_mb(pid);
    let mut r = reqwest::get(gw.url("/big")).await.unwrap();
    let (mut received, mut peak) = (0usize, before);
    let mut next_sample = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len();
        if received >= next_sample {
            peak = peak.max(rss_mb(pid));
            next_sample += 16 << 20;
        }
    }
    assert_eq!(received, TOTAL);
    assert!(
        peak - before < 32.0,
        "gateway RSS grew from {before:.1} MB to {peak:.1} MB during a 500 MB download"
    );
}

/// A backend that announces a body and dies halfway through it.
async fn dying_backend(head: &'static str, partial: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(partial).await;
                let _ = tcp.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Dropped: the connection closes mid-body.
            });
        }
    });
    addr
}

/// What a client reads until the gateway closes the connection.
async fn read_until_close(gw: &GatewayProcess, request: &str) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .expect("the gateway closes a truncated transfer");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_body_is_a_truncated_transfer_never_a_clean_end() {
    let db = TestDb::new(DbKind::Sqlite);
    let request = "GET /file HTTP/1.1\r\nHost: t\r\n\r\n";

    // Announced length, half delivered: the client gets fewer bytes than
    // announced, then the close.
    let backend = dying_backend(
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        &[b'a'; 500],
    )
    .await;
    let gw = gateway_to(&db, backend).await;
    let got = read_until_close(&gw, request).await;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response header");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    assert!(
        body.len() < 1000,
        "a complete body from a backend that died"
    );

    // Chunked, cut before the last chunk: the client never gets the
    // terminating zero-length chunk.
    let backend = dying_backend(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
    )
    .await;
    let db2 = TestDb::new(DbKind::Sqlite);
    let gw = gateway_to(&db2, backend).await;
    let got = read_until_close(&gw, request).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("hello"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "a clean end: {text:?}");
}

/// A body that the backend ends by closing its connection reaches the
/// client chunked, with a clean end, on a connection that stays open; an
/// informational answer (103 Early Hints) reaches it before the final one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_bodies_end_cleanly_and_early_hints_go_ahead() {
    let db = TestDb::new(DbKind::Sqlite);
    let request = "GET /page HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let backend = dying_backend("HTTP/1.1 200 OK\r\n\r\n", b"the whole body").await;
    let gw = gateway_to(&db, backend).await;
    let got = read_until_close(&gw, request).await;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response header");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(body.contains("the whole body"), "{body:?}");
    assert!(body.ends_with("0\r\n\r\n"), "no clean end: {body:?}");

    let backend = dying_backend(
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"ok",
    )
    .await;
    let db2 = TestDb::new(DbKind::Sqlite);
    let gw = gateway_to(&db2, backend).await;
    let got = read_until_close(&gw, request).await;
    let text = String::from_utf8_lossy(&got);
    let hints = text.find("HTTP/1.1 103").expect("the early hints");
    let last = text.find("HTTP/1.1 200").expect("the final answer");
    assert!(hints < last, "{text}");
    assert!(text[..last].contains("</style.css>"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text:?}");
}

/// An echo backend that hashes what it received.
async fn hashing_backend() -> SocketAddr {
    let app = axum::Router::new()
        .fallback(|body: Bytes| async move {
            format!("{} {}", body.len(), hex::encode(Sha256::digest(&body)))
        })
        // axum's own 2 MB default would refuse the 4 MiB upload.
        .layer(axum::extract::DefaultBodyLimit::disable());
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_and_chunked_uploads_pass_through() {
    let db = TestDb::new(DbKind::Sqlite);
    let gw = gateway_to(&db, hashing_backend().await).await;

    // 100-continue: the client waits for the interim answer, then sends.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an interim answer before the body")
            .unwrap();
        assert!(n > 0, "closed before an interim answer");
        received.extend_from_slice(&buf[..n]);
    }
    let interim = String::from_utf8_lossy(&received).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    tcp.write_all(b"hello").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut received))
        .await
        .expect("the final answer, then the close the request asked for")
        .unwrap();
    let all = String::from_utf8_lossy(&received).into_owned();
    let (_, answer) = all
        .split_once("\r\n\r\n")
        .expect("the interim answer's end");
    let hello = hex::encode(Sha256::digest(b"hello"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("5 {hello}")), "{answer}");

    // A chunked upload of 4 MiB in 64 KiB pieces arrives whole.
    let piece = Bytes::from((0..64 * 1024).map(|i| (i % 253) as u8).collect::<Vec<_>>());
    let mut whole = Vec::new();
    for _ in 0..64 {
        whole.extend_from_slice(&piece);
    }
    let pieces =
        futures_util::stream::iter((0..64).map(move |_| Ok::<_, std::io::Error>(piece.clone())));
    let r = reqwest::Client::new()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("{} {}", whole.len(), hex::encode(Sha256::digest(&whole)))
    );
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
