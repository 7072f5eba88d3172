//! Load generation (open and closed loop) and what the samples say.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::Gateway;

#[derive(Clone)]
pub struct Sample {
    /// From the scheduled start to the end of the response.
    pub latency: Duration,
    /// Known processing time of a chat (0 for other requests).
    pub processing: Duration,
    pub ok: bool,
    /// Why it failed: the status, or the client's error.
    pub failure: Option<String>,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(20_000)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn chat_body(user: &str, processing_ms: u64) -> Value {
    json!({"user_number": user, "message": format!("[delay={processing_ms}] olá")})
}

/// A chat whose processing takes 300 ± 100 ms, with that time.
pub fn varied_chat(user: &str) -> (Value, Duration) {
    let ms = 200 + fastrand::u64(0..=200);
    (chat_body(user, ms), Duration::from_millis(ms))
}

pub fn user(phase: u32, i: usize) -> String {
    format!("55{phase:02}{i:09}")
}

/// Open loop: request `i` starts at `start + i / rate`, whether or not
/// earlier ones have finished.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    rate: f64,
    duration: Duration,
    body: impl Fn(usize) -> (Value, Duration),
) -> Vec<Sample> {
    open_loop_spread(std::slice::from_ref(client), url, rate, duration, body).await
}

/// `open_loop` with request `i` sent by `clients[i % clients.len()]`: over
/// HTTP/2 each client is one connection, which carries at most 100 streams.
pub async fn open_loop_spread(
    clients: &[reqwest::Client],
    url: &str,
    rate: f64,
    duration: Duration,
    body: impl Fn(usize) -> (Value, Duration),
) -> Vec<Sample> {
    let n = (rate * duration.as_secs_f64()) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let (json, processing) = body(i);
        let req = clients[i % clients.len()].post(url).json(&json);
        tasks.push(tokio::spawn(async move {
            let failure = match req.send().await {
                Ok(r) if !r.status().is_success() => Some(format!("HTTP {}", r.status().as_u16())),
                Ok(r) => r.bytes().await.err().map(|e| format!("body: {e}")),
                Err(e) if e.is_timeout() => Some("client timeout".to_owned()),
                Err(e) if e.is_connect() => Some("connect failed".to_owned()),
                Err(e) => Some(format!("request failed: {e}")),
            };
            Sample {
                latency: at.elapsed(),
                processing,
                ok: failure.is_none(),
                failure,
            }
        }));
    }
    let mut samples = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    samples
}

/// Closed loop: `conns` clients each sending GETs back to back for `duration`.
pub async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    conns: usize,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    if let Ok(r) = client.get(&url).send().await
                        && r.status().is_success()
                        && r.bytes().await.is_ok()
                    {
                        lat.push(t.elapsed());
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    (all.len() as f64 / duration.as_secs_f64(), all)
}

/// Chat added latency of `gw` at `rate` chats/s of 300 ± 100 ms
/// processing, spread over `users` users of `phase` whose agents exist
/// before the clock starts.
pub async fn steady_latency(
    cx: &crate::Ctx<'_>,
    gw: &Gateway,
    phase: u32,
    users: usize,
    rate: f64,
) -> Added {
    let users: Vec<String> = (0..users).map(|i| user(phase, i)).collect();
    warm_up(cx.client, gw, &users).await;
    let samples = open_loop(
        cx.client,
        &gw.chat_url(),
        rate,
        Duration::from_secs(cx.phase_secs),
        |i| varied_chat(&users[i % users.len()]),
    )
    .await;
    added_latency(&samples)
}

/// Creates each user's agent and mapping, so measured chats are steady-state.
pub async fn warm_up(client: &reqwest::Client, gw: &Gateway, users: &[String]) {
    let url = gw.chat_url();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let (client, url, sem, body) =
                (client.clone(), url.clone(), sem.clone(), chat_body(u, 0));
            tokio::spawn(async move {
                let _permit = sem.acquire().await;
                let _ = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status());
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn millis(d: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v
}

pub struct Added {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub errors: usize,
    pub n: usize,
}

impl Added {
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.1} / p90 {:.1} / p99 {:.1} ({} chats, {} errors)",
            self.p50, self.p90, self.p99, self.n, self.errors
        )
    }
}

pub fn added_latency(samples: &[Sample]) -> Added {
    let mut added: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| (s.latency.as_secs_f64() - s.processing.as_secs_f64()) * 1000.0)
        .collect();
    added.sort_by(f64::total_cmp);
    Added {
        p50: percentile(&added, 50.0),
        p90: percentile(&added, 90.0),
        p99: percentile(&added, 99.0),
        errors: samples.iter().filter(|s| !s.ok).count(),
        n: samples.len(),
    }
}
