//! Assembles the Pingora server from a validated config.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::server::ExecutionPhase;
use tokio::sync::broadcast::error::RecvError;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use crate::agents::LazyStore;
use crate::chat::ChatService;
use crate::config::Config;
use crate::limits::ChatLimits;
use crate::proxy::front::Front;
use crate::proxy::upstreams::RouteTable;
use crate::proxy::{Gateway, GatewayProxy};

/// Seconds the runtimes get to stop after the drain period.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 2;

/// A built server and its count of requests in flight.
pub struct Built {
    pub server: Server,
    pub inflight: Arc<AtomicUsize>,
}

/// Serves until a signal ends the process. On SIGTERM, Pingora stops
/// accepting and then sleeps the whole grace period; the drain watcher ends
/// the process as soon as the last in-flight request has finished instead.
pub fn run(cfg: &Config) -> Result<std::convert::Infallible, String> {
    let Built { server, inflight } = build_server(cfg)?;
    let phases = server.watch_execution_phase();
    std::thread::Builder::new()
        .name("drain-watcher".into())
        .spawn(move || watch_drain(phases, inflight))
        .map_err(|e| format!("drain watcher: {e}"))?;
    server.run_forever()
}

fn watch_drain(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    inflight: Arc<AtomicUsize>,
) {
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
    while inflight.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("Drained: no request in flight; exiting.");
    std::process::exit(0);
}

pub fn build_server(cfg: &Config) -> Result<Built, String> {
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
    crate::ids::configure(
        crate::ids::UserRules::new(&cfg.users.pattern, &cfg.users.pseudonym_key)
            .map_err(|e| format!("users.pattern: {e}"))?,
    );
    let tokens = cfg.tokens()?;
    if !tokens.is_enabled() {
        tracing::warn!(
            "No bearer token configured (EAI_GATEWAY_TOKENS, auth.tokens_file): the /eai-gateway routes are open."
        );
    }
    let store = Arc::new(LazyStore::new(cfg.database.clone()));
    let agents = crate::upstream::build(&cfg.agent_service, &cfg.users.pseudonym_key)
        .map_err(|e| format!("agent_service: {e}"))?;
    let inflight = Arc::new(AtomicUsize::new(0));
    let gateway = Arc::new(Gateway {
        chat: ChatService::new(
            store,
            agents,
            &cfg.chat,
            &cfg.agents,
            cfg.limits.user_queue_max,
        ),
        routes: RouteTable::from_config(cfg)?,
        limits: ChatLimits::new(cfg.limits.user_rate_per_min, cfg.limits.max_inflight_chats),
        tokens,
        protect_passthrough: cfg.auth.protect_passthrough,
        max_body_bytes: cfg.chat.max_body_bytes,
        max_message_chars: cfg.chat.max_message_chars,
        body_timeout: Duration::from_millis(cfg.chat.body_timeout_ms),
        inflight: inflight.clone(),
    });
    let proxy = http_proxy(&server.configuration, GatewayProxy(gateway.clone()));
    let mut proxy = Service::new("eai-gateway".to_owned(), Front::new(gateway, proxy));
    // Pingora's default read buffer is 64 KiB per client connection: with
    // thousands of chats held open that dominates memory. Small JSON requests
    // fit in a few KiB; larger bodies still stream, in more reads.
    proxy.add_listener(
        ListenerConfig::tcp(cfg.listen.clone())
            .l4_buffer(L4BufferSettings::default().read(cfg.read_buffer_bytes)),
    );
    server.add_service(proxy);

    if let Some(addr) = &cfg.metrics_listen {
        let mut metrics = crate::metrics_http::service(cfg.metrics_tokens()?);
        metrics.add_tcp(addr);
        server.add_service(metrics);
    }
    Ok(Built { server, inflight })
}
