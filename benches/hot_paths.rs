//! Criterion micro-benchmarks of the per-request hot paths:
//! `cargo bench --bench hot_paths`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use eai_gateway::chat::{ChatAnswer, CompletedMessage};
use eai_gateway::ids::{AgentId, UserNumber, UserRules};
use eai_gateway::mapping::cache::MappingCache;
use eai_gateway::routes::{self, chat};
use http::Method;
use serde_json::{Value, json};

fn decoding(c: &mut Criterion) {
    let body = r#"{"user_number": "+5521999999999", "message": "Olá, preciso renovar meu documento. Como faço?", "metadata": {"channel": "whatsapp"}}"#.as_bytes();
    let rules = chat::ChatRules {
        users: UserRules::standard(),
        max_message_chars: 4096,
    };
    c.bench_function("decode and validate a chat body", |b| {
        b.iter(|| {
            let value: Value = serde_json::from_slice(black_box(body)).unwrap();
            chat::decode(&value, &rules).unwrap()
        })
    });
    c.bench_function("validate a path user number", |b| {
        b.iter(|| {
            routes::agent::user_from_path(&rules.users, black_box("%2B5521999999999")).unwrap()
        })
    });
    c.bench_function("match a native route", |b| {
        b.iter(|| {
            routes::match_native(
                black_box(&Method::GET),
                black_box("/eai-gateway/agent/5521999999999"),
            )
        })
    });
}

fn cache(c: &mut Criterion) {
    let cache = MappingCache::new(100_000, Duration::from_secs(30));
    let rules = UserRules::standard();
    let users: Vec<UserNumber> = (0..10_000)
        .map(|i| rules.parse(&format!("5521{i:09}")).unwrap())
        .collect();
    for (i, u) in users.iter().enumerate() {
        cache.put(u, &AgentId::parse(&format!("agent-{i}")).unwrap());
    }
    let mut i = 0;
    c.bench_function("mapping cache hit", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            cache.get(black_box(&users[i])).unwrap()
        })
    });
}

fn response(c: &mut Criterion) {
    let messages: Vec<Value> = (0..2)
        .map(|i| {
            json!({"id": format!("message-{i}"), "date": "2026-11-25T15:45:32+00:00", "message_type": "assistant_message",
                   "run_id": "run-1361c679-40ca-4022-b2c8-0615dda0f016", "content": "echo: Olá, preciso renovar meu documento."})
        })
        .collect();
    let data = json!({"messages": messages, "agent_id": "agent-ad1798a2-3f73-444f-bd53-72953793ecff",
                      "usage": {"completion_tokens": 13, "prompt_tokens": 706, "total_tokens": 719}});
    c.bench_function("assemble and serialise the chat response", |b| {
        b.iter(|| {
            let answer = ChatAnswer {
                response: CompletedMessage {
                    status: "completed",
                    message_id: "run-1361c679-40ca-4022-b2c8-0615dda0f016".into(),
                    data: black_box(&data).clone(),
                },
            };
            serde_json::to_vec(&answer).unwrap()
        })
    });
}

criterion_group!(hot_paths, decoding, cache, response);
criterion_main!(hot_paths);
