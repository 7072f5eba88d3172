//! HTTP/2 against a hostile client. The gateway's listener keeps the limits
//! of Pingora's own accept loop: a malformed-stream budget per connection
//! and h2's bound on streams reset before they are accepted ("rapid
//! reset"). Meanwhile a well-behaved client on another connection is
//! served throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::Request;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::support::*;
use super::tls::{Pki, TlsFiles, client, seeing_backend, tls_gateway};

type Driver = tokio::task::JoinHandle<Result<(), h2::Error>>;

/// A raw HTTP/2 connection to `localhost` at `addr` (TLS, ALPN `h2`), with
/// the task that drives it.
async fn h2_connection(pki: &Pki, addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, Driver) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(connection))
}

/// A client on its own connection that keeps asking until told to stop;
/// counts what it got.
struct WellBehaved {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl WellBehaved {
    fn start(pki: &Pki, https: SocketAddr) -> Self {
        let client = client(&pki.ca_pem, https, false);
        let url = format!("https://localhost:{}/api/items", https.port());
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 && r.version() == reqwest::Version::HTTP_2 => {
                        served2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{:?} {}", r.version(), r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            failures
        });
        Self { stop, served, task }
    }

    /// Stops it; panics unless every request it made was served.
    async fn served_throughout(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "well-behaved client failed: {failures:?}"
        );
        let served = self.served.load(Ordering::Relaxed);
        assert!(served > 0, "the well-behaved client was never served");
        served
    }
}

async fn hostile_setup() -> (TestDb, GatewayProcess, Pki, TlsFiles, SocketAddr) {
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, agent) = simulator(10).await;
    let backend = seeing_backend().await;
    let pki = Pki::new("h2-abuse");
    let files = TlsFiles::new(&pki);
    let (gw, https) = tls_gateway(&db, agent, backend, &files, Vec::new()).await;
    (db, gw, pki, files, https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_end_the_connection_after_pingoras_budget() {
    let (_db, _gw, pki, _files, https) = hostile_setup().await;
    let good = WellBehaved::start(&pki, https);
    let (mut send, driver) = h2_connection(&pki, https).await;

    // `:authority` and `Host` disagree: Pingora refuses the stream and
    // counts it against the connection's budget.
    let mut refused = 0;
    let mut ended_after = None;
    for i in 0..100 {
        let request = Request::get(format!("https://localhost:{}/api/items", https.port()))
            .header(http::header::HOST, "other.example")
            .body(())
            .unwrap();
        send = match send.ready().await {
            Ok(ready) => ready,
            Err(_) => {
                ended_after = Some(i);
                break;
            }
        };
        let sent = send.send_request(request, true);
        let answered = match sent {
            Ok((response, _)) => response.await,
            Err(e) => Err(e),
        };
        match answered {
            // Refused one by one: a 4xx, or the stream reset.
            Ok(r) => assert!(r.status().is_client_error(), "{}", r.status()),
            Err(e) if e.is_reset() && !e.is_go_away() => {}
            Err(_) => {
                ended_after = Some(i);
                break;
            }
        }
        refused += 1;
    }
    let ended_after = ended_after.unwrap_or_else(|| {
        panic!("100 malformed streams on one connection, and it is still open ({refused} refused)")
    });
    // Pingora's budget is 32 malformed streams per connection.
    assert!(
        ended_after <= 32,
        "the connection ended only after {ended_after} malformed streams"
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver)
        .await
        .expect("the torn-down connection's driver ends");
    good.served_throughout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rapid_resets_are_bounded() {
    let (_db, _gw, pki, _files, https) = hostile_setup().await;
    let good = WellBehaved::start(&pki, https);
    let (mut send, driver) = h2_connection(&pki, https).await;

    // Each stream is opened and at once abandoned: h2 sends RST_STREAM
    // (CANCEL) when the last handle of an unfinished stream is dropped.
    let mut sent = 0u32;
    for _ in 0..10_000 {
        let request = Request::get(format!("https://localhost:{}/api/items", https.port()))
            .body(())
            .unwrap();
        send = match send.ready().await {
            Ok(ready) => ready,
            Err(_) => break,
        };
        match send.send_request(request, true) {
            Ok((response, stream)) => {
                drop((response, stream));
                sent += 1;
            }
            Err(_) => break,
        }
    }
    // The server ends the connection (GOAWAY) well before the client is
    // done, instead of taking every reset stream as work.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), driver)
        .await
        .expect("the server ends an abusive connection")
        .unwrap();
    let error = ended.expect_err("the connection ends with an error, not cleanly");
    assert!(
        error.is_go_away() || error.is_io(),
        "connection ended with {error}"
    );
    assert!(sent < 10_000, "all 10,000 resets were taken");
    good.served_throughout().await;
}
