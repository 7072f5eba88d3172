//! Saturation gauges, read from the live state when the metrics are
//! scraped, so the request path pays nothing for them. (Agent-service call
//! counts are kept at the call site instead: the client is replaced on
//! reload while its calls finish.)

use crate::metrics;
use crate::reload::Live;

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub fn refresh(live: &Live) {
    let gateway = live.peek();
    metrics::CHATS_IN_FLIGHT.set(gauge(gateway.limits.in_flight()));
    metrics::CHATS_IN_FLIGHT_LIMIT.set(gauge(gateway.limits.max_in_flight().unwrap_or(0)));
    let chat = gateway.chat.saturation();
    metrics::CHATS_WAITING.set(gauge(chat.waiting));
    metrics::LEASES_HELD.set(gauge(chat.leases_held));
    metrics::MAPPING_CACHE_ENTRIES.set(gauge(chat.cache_entries));
    if let Some(pool) = chat.pool {
        metrics::DB_CONNECTIONS
            .with_label_values(&["in_use"])
            .set(i64::from(pool.in_use));
        metrics::DB_CONNECTIONS
            .with_label_values(&["idle"])
            .set(i64::from(pool.idle));
        metrics::DB_CONNECTIONS_MAX.set(i64::from(pool.max));
    }
}
