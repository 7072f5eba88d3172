//! Live configuration: the gateway's settings-derived parts behind one
//! atomic pointer, and the SIGHUP reload that swaps them.
//!
//! A request takes the current `Gateway` once, when it starts, and keeps it
//! to its end; a reload builds a complete new one next to it (sharing the
//! state that must outlive it: mapping, lanes, leases, limits' counts,
//! healthy upstreams) and swaps it in with one store. So no request ever
//! sees half a configuration, and a configuration that fails to build
//! changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::auth::TokenSet;
use crate::gateway::Gateway;
use crate::inflight::InFlight;
use crate::metrics;
use crate::settings::Settings;
use crate::spans::Tracer;
use crate::tls::Certificate;

/// What every request reads first.
pub struct Live {
    gateway: ArcSwap<Gateway>,
    metrics_tokens: ArcSwap<TokenSet>,
    /// Set once the process starts shutting down: responses from then on
    /// say `Connection: close`.
    closing: AtomicBool,
    /// Requests being served, and keep-alive connections waiting for their
    /// next one; shutdown waits for them, up to the drain period.
    pub inflight: InFlight,
    /// The HTTPS listener's certificate, re-read on reload; `None` without
    /// a `tls:` section.
    pub certificate: Option<Arc<Certificate>>,
    /// Span export (`tracing:`), built once with the process: `None` when
    /// off, the one check a request makes.
    pub spans: Option<Arc<Tracer>>,
}

impl Live {
    pub fn new(
        gateway: Gateway,
        metrics_tokens: TokenSet,
        inflight: InFlight,
        certificate: Option<Arc<Certificate>>,
        spans: Option<Arc<Tracer>>,
    ) -> Self {
        Self {
            gateway: ArcSwap::from_pointee(gateway),
            metrics_tokens: ArcSwap::from_pointee(metrics_tokens),
            closing: AtomicBool::new(false),
            inflight,
            certificate,
            spans,
        }
    }

    /// The current gateway, to keep for one request.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// A short look at the current gateway, without keeping it.
    pub fn peek(&self) -> arc_swap::Guard<Arc<Gateway>> {
        self.gateway.load()
    }

    pub fn metrics_tokens(&self) -> arc_swap::Guard<Arc<TokenSet>> {
        self.metrics_tokens.load()
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    fn swap(&self, gateway: Gateway, metrics_tokens: TokenSet) {
        self.gateway.store(Arc::new(gateway));
        self.metrics_tokens.store(Arc::new(metrics_tokens));
    }
}

/// Re-reads the configuration on SIGHUP; also starts the upstreams' health
/// checks, which need the runtime this service runs on.
pub struct Reloader {
    live: Arc<Live>,
    /// The file `run` was given; `None` when the settings were built in code
    /// (the demo), which leaves nothing to re-read.
    source: Option<PathBuf>,
    running: Mutex<Settings>,
}

impl Reloader {
    pub fn new(live: Arc<Live>, source: Option<PathBuf>, running: Settings) -> Self {
        Self {
            live,
            source,
            running: Mutex::new(running),
        }
    }

    /// One reload: all of it or nothing.
    fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.source else {
            return Err("the settings were not read from a file; nothing to reload".into());
        };
        let new = Settings::load(path).map_err(|e| e.to_string())?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        refuse_restart_only(&running, &new)?;
        let gateway = Gateway::reconfigured(&new, &self.live.peek())?;
        // Last of what can fail: a refused reload keeps the old certificate
        // along with everything else.
        if let Some(certificate) = &self.live.certificate {
            certificate.reload(&new.tls)?;
        }
        gateway.routes.activate();
        new.auth.tokens.warn_if_open();
        self.live.swap(gateway, new.auth.metrics_tokens.clone());
        *running = new;
        Ok(())
    }
}

/// The refusal of a change that needs a new process, naming every such key.
pub fn refuse_restart_only(running: &Settings, new: &Settings) -> Result<(), String> {
    let changed = running.restart_only_changes(new);
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: cannot change while running (restart, or upgrade with `run --upgrade`)",
            changed.join(", ")
        ))
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.live.peek().routes.activate();
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGHUP: reload is off.");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = hangups.recv() => {}
                _ = shutdown.changed() => return,
            }
            let source = self.source.as_ref().map(|p| p.display().to_string());
            match self.reload() {
                Ok(()) => {
                    metrics::CONFIG_RELOADS
                        .with_label_values(&["success"])
                        .inc();
                    metrics::config_taken();
                    tracing::info!(file = source, "Configuration reloaded.");
                }
                Err(error) => {
                    metrics::CONFIG_RELOADS
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::error!(
                        file = source,
                        error,
                        "Configuration reload refused; the running configuration stays."
                    );
                }
            }
        }
    }
}
