//! Upstream calls per chat at 0.3 s, 3 s and 30 s processing.

use crate::load::{chat_body, user, warm_up};
use crate::metrics::{scrape, sum_prefix};
use crate::{Ctx, Rows, verdict};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let (client, gw) = (cx.client, cx.gw);
    let chat_url = gw.chat_url();
    let processing: [(u32, u64, Option<f64>); 3] = [
        (7, 300, None),
        (8, 3_000, Some(12.0)),
        (9, 30_000, Some(25.0)),
    ];
    for (phase, ms, budget) in processing {
        let users: Vec<String> = (0..20).map(|i| user(phase, i)).collect();
        warm_up(client, gw, &users).await;
        let before = scrape(gw).await;
        let calls: Vec<_> = users
            .iter()
            .map(|u| client.post(&chat_url).json(&chat_body(u, ms)).send())
            .collect();
        let results = futures_util::future::join_all(calls).await;
        let ok = results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
            .count();
        let after = scrape(gw).await;
        let upstream = sum_prefix(&after, "eai_gateway_agent_service_calls_total")
            - sum_prefix(&before, "eai_gateway_agent_service_calls_total");
        let polls = after
            .get("eai_gateway_chat_polls_sum")
            .copied()
            .unwrap_or(0.0)
            - before
                .get("eai_gateway_chat_polls_sum")
                .copied()
                .unwrap_or(0.0);
        let per_chat = polls / ok.max(1) as f64;
        rows.add(
            &format!(
                "upstream calls per chat at {:.1} s processing",
                ms as f64 / 1000.0
            ),
            format!(
                "{:.1} calls ({per_chat:.1} polls + 1 send), {ok}/20 ok",
                upstream / ok.max(1) as f64
            ),
            &budget.map_or("—".to_owned(), |b| format!("polls ≤ {b}")),
            budget.map_or("—", |b| verdict(per_chat <= b && ok == 20)),
        );
    }
}
