//! EAI Gateway: a Pingora reverse proxy that gives every chat user one
//! long-lived agent and turns the agent service's send-then-poll protocol
//! into one synchronous call. See README.md for the architecture.

// Public: what the binary, the tests, the benches and the fuzz targets use.
// Everything else is private, so the compiler reports what nothing uses.
mod agent_service;
mod auth;
pub mod chat;
mod context;
pub mod demo;
mod error;
pub mod fuzzing;
pub mod ids;
mod inflight;
mod limits;
pub mod mapping;
mod metrics;
mod metrics_http;
mod proxy;
mod reload;
pub mod routes;
mod saturation;
pub mod server;
pub mod settings;
pub mod sim;

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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("EAI_GATEWAY_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour only on a terminal: piped or redirected logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
