//! EAI Gateway: a Pingora reverse proxy that gives every chat user one
//! long-lived agent and turns the agent service's send-then-poll protocol
//! into one synchronous call. See docs/architecture.md for the request path and the module map.

#![warn(missing_docs)]

//! # Embedding
//!
//! [`EaiGateway`] is the middleware: build it from [`settings::Settings`]
//! (or a config file), add its background services to your Pingora server,
//! and call [`EaiGateway::handle`] from your `ProxyHttp::request_filter`.
//! [`sim`] is the agent-service simulator, for your own tests. [`server`] is
//! the standalone server the `eai-gateway` binary runs, built on the same
//! middleware. Nothing else is public: the feature `internals` exposes more
//! modules, hidden and unstable, for this crate's own tests, benches and
//! fuzz targets.

// Modules private to the crate, public (hidden, unstable) with the feature
// `internals` for the crate's own tests, benches and fuzz targets. Spelled
// out rather than made by a macro: rustfmt only follows `mod` items it can
// see, and would leave these files unformatted.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod chat;
#[cfg(not(feature = "internals"))]
mod chat;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod ids;
#[cfg(not(feature = "internals"))]
mod ids;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod mapping;
#[cfg(not(feature = "internals"))]
mod mapping;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod routes;
#[cfg(not(feature = "internals"))]
mod routes;

pub mod admin;
mod agent_service;
mod auth;
#[cfg(any(test, feature = "internals"))]
#[doc(hidden)]
pub mod catalog;
mod context;
mod error;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod inflight;
mod limits;
mod metrics;
mod metrics_http;
mod middleware;
mod path;
mod proxy;
mod reload;
mod saturation;
pub mod server;
pub mod settings;
pub mod sim;
mod spans;
mod tls;
mod upstreams;

pub use middleware::{EaiGateway, SetupError};

/// The version and the commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("EAI_GATEWAY_COMMIT"),
    ")"
);

/// Installs the tracing subscriber (which also takes Pingora's `log` lines).
/// `EAI_GATEWAY_LOG_FORMAT=json` selects JSON lines; `RUST_LOG` filters.
pub fn init_logging() {
    init_logging_on(false);
}

/// `init_logging`, writing to standard error: for a command whose standard
/// output is its result (an export, a JSON report).
pub fn init_logging_to_stderr() {
    init_logging_on(true);
}

fn init_logging_on(stderr: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("EAI_GATEWAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour only on a terminal: piped or redirected logs stay plain text.
    let ansi = if stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match (json, stderr) {
        (true, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (true, false) => builder.json().try_init(),
        (false, true) => builder.with_writer(std::io::stderr).try_init(),
        (false, false) => builder.try_init(),
    };
}
