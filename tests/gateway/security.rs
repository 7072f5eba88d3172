//! Auth, rate limits, strict input handling, request ids and PII-safe logs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::support::*;

/// Reads the start of the response on `s` and checks its status code.
fn assert_answers(s: &mut TcpStream, status: &str) {
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
}

const TOKEN: &str = "gateway-token-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

async fn gateway(
    spec_fn: impl FnOnce(&mut GatewaySpec),
) -> (eai_gateway::sim::Simulator, TestDb, GatewayProcess) {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = {
        let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
        spec_fn(&mut spec);
        GatewayProcess::start(spec).await
    };
    (sim, db, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_native_routes_only() {
    let backend = plain_backend().await;
    let (_sim, _db, gw) = gateway(|s| {
        s.env.push((
            "EAI_GATEWAY_TOKENS",
            format!("other-token-0123456789, {TOKEN}"),
        ));
        s.env
            .push(("EAI_GATEWAY_METRICS_TOKENS", METRICS_TOKEN.into()));
        s.default_upstream = Some(backend.to_string());
    })
    .await;
    let client = reqwest::Client::new();
    let body = json!({"user_number": "5521933330001", "message": "oi"});
    let mut details = Vec::new();
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789abc"),
        Some(TOKEN),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        let mut req = client.post(gw.url("/eai-gateway/chat")).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        details.push(r.json::<Value>().await.unwrap()["detail"].clone());
    }
    assert!(
        details.windows(2).all(|w| w[0] == w[1]),
        "no hint which: {details:?}"
    );
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(gw.url("/eai-gateway/agent/5521933330001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The asynchronous form and its outcome route take the same token.
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .header("prefer", "respond-async")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .header("prefer", "respond-async")
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client.get(gw.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(gw.url(&location))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 202), "{}", r.status());
    for open in ["/healthz", "/readyz", "/some/backend/page"] {
        let r = client.get(gw.url(open)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    let metrics = format!("http://{}/metrics", gw.metrics);
    assert_eq!(client.get(&metrics).send().await.unwrap().status(), 401);
    assert_eq!(
        client
            .get(&metrics)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = client
        .get(&metrics)
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = Metrics::parse(&r.text().await.unwrap());
    assert_eq!(
        metrics.value(
            "eai_gateway_rejections_total",
            &[("reason", "unauthorized")]
        ),
        // Four chats, the agent route, the asynchronous chat and its outcome.
        Some(7.0),
        "{}",
        metrics.page
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_pass_through_needs_the_token() {
    let backend = plain_backend().await;
    let (_sim, _db, gw) = gateway(|s| {
        s.env.push(("EAI_GATEWAY_TOKENS", TOKEN.into()));
        s.default_upstream = Some(backend.to_string());
        s.extra_yaml = "auth:\n  protect_passthrough: true\n".into();
    })
    .await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(gw.url("/page")).send().await.unwrap().status(),
        401
    );
    let r = client
        .get(gw.url("/page"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_rate_limit_answers_429_with_retry_after() {
    let (sim, _db, gw) =
        gateway(|s| s.env.push(("EAI_GATEWAY_USER_RATE_PER_MIN", "3".into()))).await;
    for i in 0..3 {
        let (status, body) = gw.chat("5521933330002", &format!("m{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let r = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .json(&json!({"user_number": "5521933330002", "message": "demais"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    let (status, _) = gw.chat("5521933330003", "outro usuário").await;
    assert_eq!(status, 200, "other users are not limited");
    assert_eq!(sim.stats().messages, 4);
    let metrics = gw.metrics().await;
    assert_eq!(
        metrics.value("eai_gateway_rejections_total", &[("reason", "user_rate")]),
        Some(1.0),
        "{}",
        metrics.page
    );
}

/// Fires `n` chats at once; returns the statuses and `Retry-After` values.
async fn burst(gw: &GatewayProcess, users: &[&str]) -> Vec<(u16, Option<String>)> {
    let client = reqwest::Client::new();
    let calls = users.iter().map(|u| {
        let req = client
            .post(gw.url("/eai-gateway/chat"))
            .json(&json!({"user_number": u, "message": "oi"}));
        async move {
            let r = req.send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry)
        }
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_queue_cap_and_global_inflight_cap() {
    let (sim, _db, gw) = gateway(|s| {
        s.env.push(("EAI_GATEWAY_USER_QUEUE_MAX", "2".into()));
        // Above the first burst, so only the queue cap acts on it.
        s.env.push(("EAI_GATEWAY_MAX_INFLIGHT_CHATS", "5".into()));
    })
    .await;
    sim.configure(eai_gateway::sim::SimSettings::with_delay(700));
    let mut results = burst(&gw, &["5521933330004"; 4]).await;
    results.sort();
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        2,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| r.0 == 429 && r.1.is_some())
            .count(),
        2,
        "{results:?}"
    );

    let users: Vec<String> = (10..17).map(|i| format!("55219333300{i}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let results = burst(&gw, &users).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        5,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| r.0 == 503 && r.1.as_deref() == Some("1"))
            .count(),
        2,
        "{results:?}"
    );
    let metrics = gw.metrics().await;
    for reason in ["user_queue", "max_inflight"] {
        assert_eq!(
            metrics.value("eai_gateway_rejections_total", &[("reason", reason)]),
            Some(2.0),
            "{reason}: {}",
            metrics.page
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_typed_and_timed() {
    let (sim, db, gw) = gateway(|s| {
        s.chat_extra = "  body_timeout_ms: 500\n  max_message_chars: 10\n".into();
    })
    .await;
    let client = reqwest::Client::new();
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .header("content-type", "text/plain")
        .body(r#"{"user_number": "5521933330005", "message": "oi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (status, body) = gw.chat("5521933330005", "mais de dez caracteres").await;
    assert_eq!(status, 422, "{body}");

    // Declared too large: refused before the body is read.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /eai-gateway/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"a\":")
        .unwrap();
    assert_answers(&mut s, "413");

    // Chunked and too large: refused once the cap is crossed.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /eai-gateway/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b' '; 8192];
    for _ in 0..9 {
        // The gateway may answer and close before the last chunk.
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    assert_answers(&mut s, "413");

    // A body that stops arriving times out with 408.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /eai-gateway/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user_number\"")
        .unwrap();
    assert_answers(&mut s, "408");

    assert!(db.mappings().await.is_empty());
    assert_eq!(sim.stats().create_attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_pattern_is_configurable() {
    let (_sim, _db, gw) =
        gateway(|s| s.extra_yaml = "users:\n  pattern: '^\\+?55[0-9]{11}$'\n".into()).await;
    let (status, _) = gw.chat("+5521933330006", "oi").await;
    assert_eq!(status, 200);
    let (status, body) = gw.chat("1234567890123", "oi").await;
    assert_eq!(status, 422, "{body}");
    let r = reqwest::get(gw.url("/eai-gateway/agent/1234567890123"))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_generated_returned_and_forwarded() {
    let (sim, _db, gw) = gateway(|_| {}).await;
    let client = reqwest::Client::new();
    let body = json!({"user_number": "5521933330007", "message": "oi"});
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .header("x-request-id", "trace-abc-123")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    assert!(
        sim.request_ids().iter().all(|id| id == "trace-abc-123"),
        "{:?}",
        sim.request_ids()
    );
    assert!(
        sim.request_ids().len() >= 3,
        "create, send and polls carry it"
    );
    for bad in ["has space", "<script>", &"x".repeat(200)] {
        let r = client
            .get(gw.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a generated uuid: {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_with_masked_users_and_no_message_text() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gw.log");
    let (_sim, _db, gw) = gateway(|s| {
        s.log_file = Some(log.clone());
        s.env.push(("EAI_GATEWAY_TOKENS", TOKEN.into()));
    })
    .await;
    let user = "5521987651234";
    let secret_text = "minha senha do banco";
    let r = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .bearer_auth(TOKEN)
        .json(&json!({"user_number": user, "message": secret_text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .get(gw.url(&format!("/eai-gateway/agent/{user}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("87651234") && !text.contains(user),
        "number leaked:\n{text}"
    );
    assert!(!text.contains(secret_text), "message text leaked:\n{text}");
    assert!(!text.contains(TOKEN), "token leaked:\n{text}");
    assert!(text.contains("***1234#"), "masked user expected:\n{text}");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "Request.")
        .collect();
    assert!(
        access
            .iter()
            .any(|l| l["fields"]["request_id"] == rid.as_str()
                && l["fields"]["route"] == "/eai-gateway/chat"),
        "{text}"
    );
    assert!(
        access
            .iter()
            .any(|l| l["fields"]["route"] == "/eai-gateway/agent/{user_number}"),
        "{text}"
    );
}
