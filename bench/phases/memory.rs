//! Memory: a fresh gateway idle, then with 10,000 chats in flight; the same
//! over HTTP/2 (TLS, 100 connections of 100 streams); and the same for the
//! gateway embedded in a host proxy (`examples/embed.rs`), which serves its
//! chats through pingora-proxy instead of the binary's lean path.

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use crate::load::{chat_body, open_loop_spread, user};
use crate::procs::{
    Gateway, free_port, proc_rss_mb, proc_rss_split_mb, start_embedded, start_gateway,
    start_gateway_extra,
};
use crate::{Ctx, Rows, verdict};

const CHATS: usize = 10_000;

/// What one gateway process held.
struct Held {
    idle: f64,
    peak: f64,
    anon: f64,
    file: f64,
    ok: usize,
}

impl Held {
    /// Resident memory per waiting chat, over the idle process.
    fn per_chat_kb(&self) -> f64 {
        (self.peak - self.idle) * 1024.0 / CHATS as f64
    }
}

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let binary = hold_chats(cx, start_gateway("memory", "eai", "poll", cx.sim).await, 10).await;
    rows.add(
        "gateway RSS, idle (fresh instance)",
        format!("{:.1} MB", binary.idle),
        "—",
        "—",
    );
    rows.add(
        "gateway RSS, 10,000 chats in flight (30 s processing)",
        format!(
            "{:.1} MB peak: {:.1} anon + {:.1} file-backed ({}/{CHATS} answered 200)",
            binary.peak, binary.anon, binary.file, binary.ok
        ),
        "< 150 MB",
        verdict(binary.peak < 150.0 && binary.ok == CHATS),
    );
    let (h2, clients, url, _certificates) = h2_gateway(cx.sim).await;
    let over_h2 = hold_chats_with(&h2, &clients, &url, 12).await;
    drop(h2);
    rows.add(
        "gateway RSS, 10,000 chats in flight over HTTP/2 (TLS, 100 connections)",
        format!(
            "{:.1} MB peak: {:.1} anon + {:.1} file-backed ({}/{CHATS} answered 200)",
            over_h2.peak, over_h2.anon, over_h2.file, over_h2.ok
        ),
        "< 150 MB",
        verdict(over_h2.peak < 150.0 && over_h2.ok == CHATS),
    );
    let embedded = hold_chats(cx, start_embedded("memory-embedded", cx.sim).await, 11).await;
    rows.add(
        "embedded (examples/embed.rs) RSS, idle → 10,000 chats in flight",
        format!(
            "{:.1} → {:.1} MB ({}/{CHATS} answered 200)",
            embedded.idle, embedded.peak, embedded.ok
        ),
        "—",
        verdict(embedded.ok == CHATS),
    );
    rows.add(
        "RSS per waiting chat: lean path (binary) vs embedded",
        format!(
            "{:.1} KB vs {:.1} KB",
            binary.per_chat_kb(),
            embedded.per_chat_kb()
        ),
        "—",
        "—",
    );
}

/// A gateway with an HTTPS listener (a certificate made here), and 100
/// clients trusting it, each its own HTTP/2 connection.
async fn h2_gateway(sim: SocketAddr) -> (Gateway, Vec<reqwest::Client>, String, tempfile::TempDir) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls = format!(
        "tls: {{listen: '{https}', cert_file: '{}', key_file: '{}'}}\n",
        cert_file.display(),
        key_file.display()
    );
    let gw = start_gateway_extra("memory-h2", sim, &tls).await;
    let ca = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let clients = (0..100)
        .map(|_| {
            reqwest::Client::builder()
                .tls_certs_only([ca.clone()])
                .resolve("localhost", https)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
        })
        .collect();
    let url = format!("https://localhost:{}/eai-gateway/chat", https.port());
    (gw, clients, url, dir)
}

/// Starts `CHATS` chats of 30 s each at 1,000/s against `gw` (users of
/// group `users`, new to the database) and samples its RSS until they end.
async fn hold_chats(cx: &Ctx<'_>, gw: Gateway, users: u32) -> Held {
    let url = gw.chat_url();
    let held = hold_chats_with(&gw, std::slice::from_ref(cx.client), &url, users).await;
    drop(gw);
    held
}

async fn hold_chats_with(gw: &Gateway, clients: &[reqwest::Client], url: &str, users: u32) -> Held {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = gw.proc.rss_mb();
    let launch_rate = 1_000.0;
    let sampler = {
        let pid = gw.proc.pid();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            let mut split = (0.0, 0.0);
            let end = Instant::now() + Duration::from_secs(45);
            while Instant::now() < end {
                if let Some(mb) = proc_rss_mb(pid) {
                    if mb > peak {
                        peak = mb;
                        split = proc_rss_split_mb(pid).unwrap_or_default();
                    }
                    if std::env::var_os("BENCH_TRACE_RSS").is_some() {
                        eprintln!("rss {mb:.1} MB");
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (peak, split)
        })
    };
    let samples = open_loop_spread(
        clients,
        url,
        launch_rate,
        Duration::from_secs_f64(CHATS as f64 / launch_rate),
        |i| (chat_body(&user(users, i), 30_000), Duration::from_secs(30)),
    )
    .await;
    let (peak, (anon, file)) = sampler.await.unwrap_or_default();
    let ok = samples.iter().filter(|s| s.ok).count();
    let mut failures = std::collections::BTreeMap::<&str, usize>::new();
    for f in samples.iter().filter_map(|s| s.failure.as_deref()) {
        *failures.entry(f).or_default() += 1;
    }
    if !failures.is_empty() {
        eprintln!("memory phase failures: {failures:?}");
    }
    Held {
        idle,
        peak,
        anon,
        file,
        ok,
    }
}
