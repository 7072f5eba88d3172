//! A host proxy of its own that mounts EAI Gateway as a middleware: the
//! host's `ProxyHttp` proxies everything to its own upstream, except the
//! requests the gateway answers (chat, agent, health). The gateway's
//! metrics join the host's Prometheus endpoint.
//!
//! ```text
//! cargo run --example embed -- CONFIG LISTEN UPSTREAM [METRICS_LISTEN]
//! ```
//!
//! CONFIG is an `eai-gateway` config file (its `database:`, `agent_service:`,
//! `users:`, `auth:`, `chat:` and `limits:` sections apply; the host decides
//! where to listen and where everything else goes).

use async_trait::async_trait;
use eai_gateway::EaiGateway;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// jemalloc, as the `eai-gateway` binary and Pingora in production use: the
// benchmark compares this host's memory per waiting chat with the binary's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The host's proxy: its own upstream, plus the gateway's routes.
struct Host {
    eai: EaiGateway,
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Host {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        // `true`: the gateway answered; `false`: the request is the host's.
        self.eai.handle(session).await
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, listen, upstream, rest @ ..] = args.as_slice() else {
        return Err("usage: embed CONFIG LISTEN UPSTREAM [METRICS_LISTEN]".into());
    };

    // The middleware, its tables, its background services.
    let eai = EaiGateway::from_config_file(config)?;
    tokio::runtime::Runtime::new()?.block_on(eai.migrate())?;
    let conf = ServerConf {
        threads: 2,
        // Pingora's default grace period is 300 s.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_services(eai.background_services());

    // The host's own proxy service, with the middleware mounted.
    let host = Host {
        eai,
        upstream: upstream.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, host);
    proxy.add_tcp(listen);
    server.add_service(proxy);

    // The host's metrics endpoint: Prometheus's default registry, where the
    // gateway's metrics are registered too.
    if let Some(metrics) = rest.first() {
        let mut prometheus = pingora_prometheus::prometheus_http_service();
        prometheus.add_tcp(metrics);
        server.add_service(prometheus);
    }
    server.run_forever();
}
