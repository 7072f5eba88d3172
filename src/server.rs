//! Assembles the Pingora server from a validated config.

use std::sync::Arc;

use pingora::prelude::*;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;

use crate::agents::LazyStore;
use crate::chat::ChatService;
use crate::config::Config;
use crate::proxy::Gateway;
use crate::proxy::upstreams::RouteTable;

/// Seconds the runtimes get to stop after the drain period.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 2;

pub fn build_server(cfg: &Config) -> Result<Server, String> {
    let conf = ServerConf {
        threads: cfg.threads,
        // Pingora's default is 300 s: far longer than any chat may take.
        grace_period_seconds: Some(cfg.shutdown.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECONDS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    crate::metrics::init();
    let store = Arc::new(LazyStore::new(cfg.database.clone()));
    let agents =
        crate::upstream::build(&cfg.agent_service).map_err(|e| format!("agent_service: {e}"))?;
    let gateway = Gateway {
        chat: ChatService::new(
            store,
            agents,
            &cfg.chat,
            cfg.agents.delete_upstream_on_delete,
        ),
        routes: RouteTable::from_config(cfg)?,
        max_body_bytes: cfg.chat.max_body_bytes,
    };
    let mut proxy = http_proxy_service_with_name(&server.configuration, gateway, "eai-gateway");
    proxy.add_tcp(&cfg.listen);
    server.add_service(proxy);

    if let Some(addr) = &cfg.metrics_listen {
        let mut prom = pingora_prometheus::prometheus_http_service();
        prom.add_tcp(addr);
        server.add_service(prom);
    }
    Ok(server)
}
