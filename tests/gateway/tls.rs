//! The HTTPS listener: HTTP/1.1 and HTTP/2 (ALPN) for native and proxied
//! routes, a certificate rotated by reload, and pass-through to a TLS
//! backend. Every certificate is made by the test (rcgen).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::support::*;

/// A CA and a leaf certificate it signed for `localhost`.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("eai-gateway test CA {name}"),
        );
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the leaf's certificate and key where the gateway reads them.
    fn install(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

/// A client that trusts only `ca_pem`, reaching `localhost` at `addr`.
pub(crate) fn client(ca_pem: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(20));
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

/// The rustls error under a failed request, if a TLS check failed it.
/// reqwest, hyper and tokio-rustls each wrap it; `io::Error::source()`
/// skips the error it carries (its `Display` already shows it), so an
/// `io::Error` is opened with `get_ref()` instead.
fn rustls_error(err: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Fails unless the client refused the certificate for the one reason a
/// client of another CA has: it does not know the issuer. Any other
/// failure (refused connection, timeout, wrong name, gateway down) is not
/// what is being tested.
fn assert_unknown_issuer(outcome: Result<reqwest::Response, reqwest::Error>, what: &str) {
    let err = match outcome {
        Ok(r) => panic!("{what}: the handshake succeeded ({})", r.status()),
        Err(err) => err,
    };
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{what}: not refused for an unknown issuer: {:?}; {err:?}",
        rustls_error(&err)
    );
}

pub(crate) struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    pub(crate) fn new(pki: &Pki) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.install(&files.cert(), &files.key());
        files
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// A gateway with an HTTPS listener (certificate of `files`) in front of
/// `backend`; returns it with its HTTPS address.
pub(crate) async fn tls_gateway(
    db: &TestDb,
    agent: SocketAddr,
    backend: SocketAddr,
    files: &TlsFiles,
    env: Vec<(&'static str, String)>,
) -> (GatewayProcess, SocketAddr) {
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut spec = GatewaySpec::new(Dialect::Eai, db, agent);
    spec.default_upstream = Some(backend.to_string());
    spec.env = vec![
        ("EAI_GATEWAY_TLS_LISTEN", https.to_string()),
        ("EAI_GATEWAY_TLS_CERT", files.cert().display().to_string()),
        ("EAI_GATEWAY_TLS_KEY", files.key().display().to_string()),
    ];
    spec.env.extend(env);
    (GatewayProcess::start(spec).await, https)
}

/// A backend answering with the protocol details it saw.
pub(crate) async fn seeing_backend() -> SocketAddr {
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        axum::Json(json!({"path": req.uri().path(), "proto": proto}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_for_every_route() {
    let db = TestDb::new(DbKind::Sqlite);
    let (sim, agent) = simulator(10).await;
    let backend = seeing_backend().await;
    let pki = Pki::new("one");
    let files = TlsFiles::new(&pki);
    let (gw, https) = tls_gateway(&db, agent, backend, &files, Vec::new()).await;

    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let client = client(&pki.ca_pem, https, http1_only);
        let url = |path: &str| format!("https://localhost:{}{path}", https.port());
        let user = if http1_only {
            "+5521987650081"
        } else {
            "+5521987650082"
        };

        // Native: chat, then the mapping it made.
        let r = client
            .post(url("/eai-gateway/chat"))
            .json(&json!({"user_number": user, "message": "por https"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(answer_text(&body), "echo: por https");
        let agent_id = answering_agent(&body);
        let r = client
            .get(url(&format!(
                "/eai-gateway/agent/{}",
                user.trim_start_matches('+')
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"agent_id": agent_id})
        );

        // Bad input is still a 4xx with a detail.
        let r = client
            .post(url("/eai-gateway/chat"))
            .json(&json!({"user_number": "12", "message": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (version, 422));

        // Proxied, and the backend learns the client spoke HTTPS.
        let r = client.get(url("/api/items")).send().await.unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"path": "/api/items", "proto": "https"})
        );
    }
    assert_eq!(sim.stats().agents_created, 2);

    // The plaintext listener stays, and says so to the backend.
    let r = reqwest::get(gw.url("/api/items")).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"path": "/api/items", "proto": "http"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_certificate_and_a_bad_one_is_refused() {
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, agent) = simulator(10).await;
    let backend = seeing_backend().await;
    let (old, new) = (Pki::new("old"), Pki::new("new"));
    let files = TlsFiles::new(&old);
    let (gw, https) = tls_gateway(&db, agent, backend, &files, Vec::new()).await;
    let url = format!("https://localhost:{}/healthz", https.port());
    // A new client per attempt: every attempt is a new handshake.
    let handshake = |pki: &Pki| {
        let client = client(&pki.ca_pem, https, false);
        let url = url.clone();
        async move { client.get(&url).send().await }
    };
    assert_eq!(handshake(&old).await.unwrap().status(), 200);
    assert_unknown_issuer(handshake(&new).await, "the new CA before the reload");

    new.install(&files.cert(), &files.key());
    gw.signal("HUP");
    let mut rotated = false;
    for _ in 0..50 {
        if handshake(&new).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new certificate was not served after SIGHUP");
    assert_unknown_issuer(handshake(&old).await, "the old CA after the reload");

    // A key that does not match the certificate: the reload is refused and
    // the certificate served stays.
    std::fs::write(files.key(), &old.key_pem).unwrap();
    gw.signal("HUP");
    // The refusal is awaited, not slept for: the certificate checked before
    // the reload ran would be the same whatever the reload did.
    let failures =
        |m: &Metrics| m.value("eai_gateway_config_reloads_total", &[("result", "failure")]);
    let mut metrics = gw.metrics().await;
    for _ in 0..100 {
        if failures(&metrics) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = gw.metrics().await;
    }
    assert_eq!(failures(&metrics), Some(1.0), "{}", metrics.page);
    assert_eq!(handshake(&new).await.unwrap().status(), 200);
}

/// `upstreams.NAME.tls`: the gateway speaks TLS to a backend, here another
/// gateway's HTTPS listener, trusting the CA the test made for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_to_a_tls_backend() {
    let (db_a, db_b) = (TestDb::new(DbKind::Sqlite), TestDb::new(DbKind::Sqlite));
    let (_sim, agent) = simulator(10).await;
    let backend = seeing_backend().await;
    let pki = Pki::new("backend");
    let files = TlsFiles::new(&pki);
    let (_tls_backend, https) = tls_gateway(&db_b, agent, backend, &files, Vec::new()).await;

    let ca_file = files.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let mut spec = GatewaySpec::new(Dialect::Eai, &db_a, agent);
    spec.extra_yaml = format!(
        "upstreams:\n  secure:\n    backends: ['{https}']\n    tls: true\n    sni: localhost\n\
         default_upstream: secure\n"
    );
    // Pingora's TLS connector reads the roots it trusts from SSL_CERT_FILE.
    spec.env
        .push(("SSL_CERT_FILE", ca_file.display().to_string()));
    let gw = GatewayProcess::start(spec).await;
    let r = reqwest::get(gw.url("/api/over-tls")).await.unwrap();
    assert_eq!(r.status(), 200);
    // The TLS backend (the second gateway) saw HTTPS and passed it on.
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"path": "/api/over-tls", "proto": "https"})
    );
}

/// The streamed and asynchronous forms of a chat over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_async_chats_over_http2() {
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, agent) = simulator(10).await;
    let backend = seeing_backend().await;
    let pki = Pki::new("streams");
    let files = TlsFiles::new(&pki);
    let (_gw, https) = tls_gateway(&db, agent, backend, &files, Vec::new()).await;
    let client = client(&pki.ca_pem, https, false);
    let url = |path: &str| format!("https://localhost:{}{path}", https.port());
    let chat = json!({"user_number": "5521987650091", "message": "[delay=300] h2"});
    let r = client
        .post(url("/eai-gateway/chat"))
        .header("accept", "text/event-stream")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_events(r, |_| false).await;
    assert_eq!(names(&events).first(), Some(&"status"));
    let done = events.last().unwrap();
    assert_eq!(done.name, "done", "{:?}", names(&events));
    assert_eq!(answer_text(&done.json()), "echo: [delay=300] h2");

    let r = client
        .post(url("/eai-gateway/chat"))
        .header("prefer", "respond-async")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut status = 202;
    for _ in 0..100 {
        status = client
            .get(url(&location))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status != 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}
