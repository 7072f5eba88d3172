//! The floor of the pass-through comparison: pingora-proxy with nothing of
//! the gateway in it (no front, hooks, metrics or logs), forwarding every
//! request to one backend. `bench/main.rs` runs it beside the gateway and
//! nginx so the table separates what Pingora itself costs from what the
//! gateway adds.
//!
//! Usage: pingora_floor LISTEN_ADDR BACKEND_ADDR
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;

/// The gateway's allocator, so that the comparison measures what the
/// gateway adds and not which allocator each binary links.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Floor {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: pingora_floor LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    };
    let conf = ServerConf {
        // The same as the gateway's benchmark configuration.
        threads: 2,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Floor {
            backend: backend.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
