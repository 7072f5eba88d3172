//! The chat forms beyond one blocking call, eai dialect on PostgreSQL:
//! how long an asynchronous chat takes to be accepted and its outcome to be
//! read, what a repeated `Idempotency-Key` costs, and when a streamed chat's
//! events arrive against the agent's processing time.

use std::time::{Duration, Instant};

use crate::load::{chat_body, millis, percentile, user, warm_up};
use crate::{Ctx, Rows};

/// Agent time of the chats measured here.
const PROCESSING_MS: u64 = 1000;

fn summary(samples: &[Duration]) -> String {
    let ms = millis(samples);
    format!(
        "p50 {:.2} / p99 {:.2} ms ({} requests)",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.len()
    )
}

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let (client, gw) = (cx.client, cx.gw);
    let chat_url = gw.chat_url();
    let n = if cx.quick { 100 } else { 300 };
    let users: Vec<String> = (0..n).map(|i| user(20, i)).collect();
    warm_up(client, gw, &users).await;

    // Accepted one after another, then read back while processing and once done.
    let mut accepted = Vec::new();
    let mut locations = Vec::new();
    for u in &users {
        let started = Instant::now();
        let r = client
            .post(&chat_url)
            .header("prefer", "respond-async")
            .json(&chat_body(u, PROCESSING_MS))
            .send()
            .await;
        accepted.push(started.elapsed());
        if let Ok(r) = r
            && r.status() == 202
            && let Some(l) = r.headers().get("location").and_then(|l| l.to_str().ok())
        {
            locations.push(format!("http://{}{l}", gw.addr));
        }
    }
    let mut pending = Vec::new();
    for l in &locations {
        let started = Instant::now();
        let _ = client.get(l).send().await;
        pending.push(started.elapsed());
    }
    let mut done = Vec::new();
    let mut answered = 0;
    for l in &locations {
        for _ in 0..200 {
            let started = Instant::now();
            let status = client
                .get(l)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            if status != 202 {
                done.push(started.elapsed());
                answered += usize::from(status == 200);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    rows.add(
        "async chat: POST to 202 (sequential)",
        summary(&accepted),
        "—",
        "—",
    );
    rows.add(
        "async chat: GET outcome while processing (202) / done (200)",
        format!(
            "{} / {}; {answered}/{n} answered 200",
            summary(&pending),
            summary(&done)
        ),
        "—",
        "—",
    );

    // A key sent twice: the second is answered from the record.
    let mut replays = Vec::new();
    for (i, u) in users.iter().enumerate().take(n / 2) {
        let key = format!("bench-{i}-{}", fastrand::u64(..));
        let body = chat_body(u, 50);
        let keyed = || {
            client
                .post(&chat_url)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
        };
        let _ = keyed().await;
        let started = Instant::now();
        let _ = keyed().await;
        replays.push(started.elapsed());
    }
    rows.add(
        "keyed chat: a repeat of a finished chat (replayed, nothing sent)",
        summary(&replays),
        "—",
        "—",
    );

    // Streamed: when the header, `sent` and `done` arrive.
    let mut header = Vec::new();
    let mut sent = Vec::new();
    let mut end = Vec::new();
    for u in users.iter().take(20) {
        let started = Instant::now();
        let Ok(mut r) = client
            .post(&chat_url)
            .header("accept", "text/event-stream")
            .json(&chat_body(u, PROCESSING_MS))
            .send()
            .await
        else {
            continue;
        };
        header.push(started.elapsed());
        let mut text = String::new();
        while let Ok(Some(chunk)) = r.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if sent.len() < header.len() && text.contains("\"sent\"") {
                sent.push(started.elapsed());
            }
        }
        if text.contains("event: done") {
            end.push(started.elapsed());
        }
    }
    rows.add(
        "streamed chat, agent 1 s: header / status sent / done",
        format!(
            "p50 {:.1} / {:.1} / {:.1} ms ({} of 20 done)",
            percentile(&millis(&header), 50.0),
            percentile(&millis(&sent), 50.0),
            percentile(&millis(&end), 50.0),
            end.len()
        ),
        "—",
        "—",
    );
}
