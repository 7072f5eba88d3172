//! The gateway as a middleware: what a host Pingora proxy mounts to answer
//! the `/eai-gateway` routes itself, and what the `eai-gateway` binary is
//! assembled from.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pingora::proxy::Session;
use pingora::services::ServiceWithDependents;
use pingora::services::background::background_service;

use crate::chat::ChatService;
use crate::error::GatewayResult;
use crate::gateway::Gateway;
use crate::ids::UserRules;
use crate::inflight::InFlight;
use crate::mapping::LazyStore;
use crate::mapping::invalidation::Invalidations;
use crate::path::{self, Target};
use crate::reload::{Live, Reloader};
use crate::routes;
use crate::settings::{ConfigError, Settings};
use crate::spans::{Exporter, SpanFlush, Tracer};
use crate::tls::Certificate;

/// Why the gateway could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetupError {
    /// The settings are invalid; the error names the key (and the file or
    /// environment variable it came from).
    Config(ConfigError),
    /// The settings are valid but a part could not be built from them, such
    /// as an upstream host that does not resolve.
    Build(String),
    /// The database migrations could not be applied.
    Migration(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "config error: {e}"),
            Self::Build(e) => f.write_str(e),
            Self::Migration(e) => write!(f, "database migration failed: {e}"),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Build(_) | Self::Migration(_) => None,
        }
    }
}

impl From<ConfigError> for SetupError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// The EAI Gateway's native routes, ready to mount in a Pingora proxy.
///
/// It answers `POST /eai-gateway/chat`, `GET` and `DELETE
/// /eai-gateway/agent/{user_number}`, every other path under
/// `/eai-gateway` (404 or 405 with `{"detail": …}`), `/healthz` and
/// `/readyz`; every other request is left to the host. Cloning is cheap:
/// clones share the mapping cache, the per-user lanes, the chat leases, the
/// database pool and the live settings.
///
/// Build it before the server runs, add its [background
/// services](Self::background_services) to the server, and call
/// [`handle`](Self::handle) first thing in your `ProxyHttp::request_filter`:
///
/// ```no_run
/// use async_trait::async_trait;
/// use eai_gateway::EaiGateway;
/// use pingora::prelude::*;
///
/// struct Host {
///     eai: EaiGateway,
/// }
///
/// #[async_trait]
/// impl ProxyHttp for Host {
///     type CTX = ();
///     fn new_ctx(&self) {}
///
///     async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
///         // `true`: answered (chat, agent, health); `false`: yours to proxy.
///         self.eai.handle(session).await
///     }
///
///     async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
///         Ok(Box::new(HttpPeer::new("127.0.0.1:3000", false, String::new())))
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let eai = EaiGateway::from_config_file("eai-gateway.yaml")?;
///     tokio::runtime::Runtime::new()?.block_on(eai.migrate())?;
///
///     let mut server = Server::new(None)?;
///     server.bootstrap();
///     server.add_services(eai.background_services());
///     let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Host { eai });
///     proxy.add_tcp("127.0.0.1:8080");
///     server.add_service(proxy);
///     server.run_forever();
/// }
/// ```
#[derive(Clone)]
pub struct EaiGateway {
    inner: Arc<Inner>,
}

struct Inner {
    live: Arc<Live>,
    /// The settings it was built from: what a reload compares against.
    settings: Settings,
    /// The file they came from, re-read on SIGHUP; `None` when built in code.
    source: Option<PathBuf>,
    /// Chats whose message is still with the agent service.
    chats: InFlight,
    /// The span exporter, until `background_services` hands it to the
    /// server (once: it owns the span queue's receiving end).
    exporter: Mutex<Option<Exporter>>,
    span_flush: Option<SpanFlush>,
}

impl EaiGateway {
    /// Builds the gateway from settings made in code (for example with
    /// [`Settings::new`] or [`Settings::parse`]). They are validated again
    /// here; a reload has no file to re-read.
    ///
    /// Nothing connects yet: the database pool is built on first use, on the
    /// runtime of the service that serves the request.
    ///
    /// ```
    /// use eai_gateway::EaiGateway;
    /// use eai_gateway::settings::Settings;
    ///
    /// let settings = Settings::parse(
    ///     "agent_service: {dialect: eai, url: 'http://127.0.0.1:8300'}\n\
    ///      database: {url: 'sqlite::memory:'}\n",
    ///     |_| None,
    /// )?;
    /// let eai = EaiGateway::new(settings)?;
    /// # drop(eai);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(settings: Settings) -> Result<Self, SetupError> {
        Self::build(settings, None)
    }

    /// Builds the gateway from a YAML config file and the environment
    /// overrides, validated as `eai-gateway run` validates them (which
    /// includes refusing a missing or placeholder `users.pseudonym_key`).
    /// SIGHUP re-reads the file (see [`background_services`](Self::background_services)).
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self, SetupError> {
        let path = path.as_ref();
        let settings = Settings::load(path)?;
        Self::build(settings, Some(path.to_path_buf()))
    }

    pub(crate) fn build(settings: Settings, source: Option<PathBuf>) -> Result<Self, SetupError> {
        settings.validate()?;
        crate::metrics::init();
        settings.auth.tokens.warn_if_open();
        let store = Arc::new(LazyStore::new(&settings.database));
        let agents = crate::agent_service::build(&settings.agent_service)
            .map_err(|e| SetupError::Build(format!("agent_service: {e}")))?;
        let chat = ChatService::new(&settings, store, agents);
        let chats = chat.running();
        let users = UserRules::new(&settings.users);
        let gateway = Gateway::new(&settings, chat, users).map_err(SetupError::Build)?;
        let certificate = Certificate::load(&settings.tls).map_err(SetupError::Build)?;
        let (tracer, exporter) = match Tracer::new(&settings.tracing) {
            Some((tracer, exporter)) => (Some(tracer), Some(exporter)),
            None => (None, None),
        };
        let live = Arc::new(Live::new(
            gateway,
            settings.auth.metrics_tokens.clone(),
            InFlight::default(),
            certificate,
            tracer,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                live,
                settings,
                source,
                chats,
                span_flush: exporter.as_ref().map(Exporter::flush_handle),
                exporter: Mutex::new(exporter),
            }),
        })
    }

    /// Applies the pending database migrations (the mapping, lease and
    /// related tables). Run it once before serving; it is idempotent.
    pub async fn migrate(&self) -> Result<(), SetupError> {
        crate::mapping::migrate(&self.inner.settings.database)
            .await
            .map_err(|e| SetupError::Migration(e.to_string()))
    }

    /// The Pingora background services the gateway needs; add them to the
    /// server that runs the proxy (`Server::add_services`). They start the
    /// pass-through upstreams' health checks, reload the configuration file
    /// on SIGHUP (when built with [`from_config_file`](Self::from_config_file)),
    /// on PostgreSQL, listen for mapping changes made by other replicas, and,
    /// with `tracing.otlp_endpoint`, export spans (the first call only).
    /// Everything else (database pool, lease renewal, cache) starts lazily on
    /// the serving runtime, so daemon mode and graceful upgrade work as for
    /// any Pingora service.
    pub fn background_services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        let inner = &self.inner;
        let mut services: Vec<Box<dyn ServiceWithDependents>> = vec![Box::new(background_service(
            "eai-gateway config",
            Reloader::new(
                inner.live.clone(),
                inner.source.clone(),
                inner.settings.clone(),
            ),
        ))];
        let gateway = inner.live.peek();
        if let Some(listener) = Invalidations::new(
            &inner.settings.database,
            gateway.chat.cache(),
            gateway.chat_rules.users.clone(),
        ) {
            services.push(Box::new(background_service(
                "eai-gateway mapping invalidations",
                listener,
            )));
        }
        let exporter = inner.exporter.lock().ok().and_then(|mut e| e.take());
        if let Some(exporter) = exporter {
            services.push(Box::new(background_service(
                "eai-gateway span export",
                exporter,
            )));
        }
        if let Some(sweeper) = crate::admin::OrphanSweeper::new(&inner.settings) {
            services.push(Box::new(background_service(
                "eai-gateway orphan sweep",
                sweeper,
            )));
        }
        services
    }

    /// Answers the request when it is the gateway's own, and returns `true`;
    /// returns `false`, having read and written nothing, when it is not.
    /// Call it from `ProxyHttp::request_filter` and return its `true` as
    /// that hook's "response sent".
    ///
    /// The gateway's own requests are the paths under `/eai-gateway`,
    /// `/healthz` and `/readyz`, read as the `paths:` settings say (a target
    /// that cannot be read safely and that names `/eai-gateway` gets a 400).
    /// Each is answered with its access line and request metrics, and under
    /// the bearer tokens of `auth:`.
    pub async fn handle(&self, session: &mut Session) -> pingora::Result<bool> {
        let gateway = self.inner.live.gateway();
        let target = path::normalize(session.req_header().raw_path(), &gateway.paths);
        self.serve_if_own(session, &gateway, &target).await
    }

    /// `handle` for a caller that has already read the target with
    /// `gateway`'s path rules (the binary routes by the same reading).
    pub(crate) async fn serve_if_own(
        &self,
        session: &mut Session,
        gateway: &Gateway,
        target: &GatewayResult<Target>,
    ) -> pingora::Result<bool> {
        if !is_own_target(session.req_header().raw_path(), target) {
            return Ok(false);
        }
        gateway
            .serve_native_request_in_proxy(session, &self.inner.live)
            .await?;
        Ok(true)
    }

    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.inner.live
    }

    /// Posts the spans still queued; what a draining process does last.
    pub(crate) fn span_flush(&self) -> Option<SpanFlush> {
        self.inner.span_flush.clone()
    }

    /// Chats still with the agent service: what a draining process waits for.
    pub(crate) fn chats(&self) -> InFlight {
        self.inner.chats.clone()
    }
}

/// Whether the gateway answers this request target itself: a native path,
/// or a target that cannot be read safely but names the native prefix (the
/// gateway refuses it rather than let the host proxy it).
fn is_own_target(raw: &[u8], target: &GatewayResult<Target>) -> bool {
    match target {
        Ok(target) => routes::is_native_path(target.path()),
        Err(_) => {
            let prefix = routes::NATIVE_PREFIX.as_bytes();
            raw.len() >= prefix.len() && raw[..prefix.len()].eq_ignore_ascii_case(prefix)
        }
    }
}
