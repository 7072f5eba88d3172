//! Assembles the Pingora server from the settings.

use std::path::Path;
use std::time::Duration;

use pingora::server::ExecutionPhase;
use tokio::sync::broadcast::error::RecvError;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use crate::inflight::InFlight;
use crate::middleware::{EaiGateway, SetupError};
use crate::proxy::GatewayProxy;
use crate::proxy::front::Front;
use crate::settings::Settings;
use crate::upstreams::RouteTable;

/// Seconds the runtimes get to stop after the drain period.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 2;

/// A built server and what shutdown waits for.
struct Built {
    server: Server,
    drain: Drain,
}

/// What a draining process waits for: requests being answered, and chats
/// whose message is still being processed after their caller stopped
/// waiting (they hold their user's turn).
struct Drain {
    requests: InFlight,
    chats: InFlight,
    period: Duration,
    /// Whose messages still in progress at the end are cancelled at the
    /// agent service.
    chat: crate::chat::ChatService,
    /// Span export, when on: the spans of the last requests go out before
    /// the process exits.
    spans: Option<crate::spans::SpanFlush>,
}

/// How a drain went: what it gave up when its period ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chats whose message was still being processed (holding its user's
    /// turn) when the process stopped; cancelled at the agent service.
    pub abandoned_messages: usize,
}

impl Drained {
    /// Nothing was given up.
    pub fn is_clean(&self) -> bool {
        self.abandoned_messages == 0
    }
}

/// Serves until a signal ends the process, then reports how the drain went.
///
/// On SIGTERM, Pingora stops accepting and then sleeps the whole grace
/// period on its main thread, with no way to end it early. So Pingora runs
/// on a thread of its own, and this returns as soon as the drain watcher
/// has seen the last request and chat finish (or the drain period end);
/// the caller then returns from `main` with a status that says how it went.
/// A fast shutdown (SIGINT), which has no grace period, returns when
/// Pingora's run does.
pub fn run(cfg: &Settings, source: Option<&Path>, start: Start) -> Result<Drained, String> {
    let Built { server, drain } = build_server(cfg, source, start)?;
    let phases = server.watch_execution_phase();
    let (done, finished) = std::sync::mpsc::channel();
    let watcher_done = done.clone();
    std::thread::Builder::new()
        .name("drain-watcher".into())
        .spawn(move || {
            let _ = watcher_done.send(watch_drain(phases, drain));
        })
        .map_err(|e| format!("drain watcher: {e}"))?;
    std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(pingora::server::RunArgs::default());
            // The drain watcher has reported by now, unless Pingora's run
            // ended without a grace period; then the watcher reports once
            // the phases end, which this thread's exit brings about.
            drop(done);
        })
        .map_err(|e| format!("pingora: {e}"))?;
    finished
        .recv()
        .map_err(|_| "the drain watcher stopped without a report".to_owned())
}

/// Waits for shutdown, then for the in-flight work to finish within the
/// drain period; cancels and counts what it gives up.
fn watch_drain(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    drain: Drain,
) -> Drained {
    let grace = loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break true,
            // A fast shutdown: no grace period, the runtimes stop now.
            Ok(ExecutionPhase::ShutdownRuntimes) | Err(RecvError::Closed) => break false,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
        }
    };
    if grace {
        let until = std::time::Instant::now() + drain.period;
        while (drain.requests.count() > 0 || drain.chats.count() > 0)
            && std::time::Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A fast shutdown stops the exporter's runtime at once: no flush.
        if let Some(spans) = &drain.spans
            && !spans.flush_blocking(SPAN_FLUSH_AT_EXIT)
        {
            tracing::warn!("Posting the last spans took too long; exiting without.");
        }
    }
    let abandoned = drain.chats.count();
    if abandoned > 0 {
        // Their leases expire on their own; the next replica waits that out.
        crate::metrics::ABANDONED_MESSAGES.inc_by(abandoned as u64);
        tracing::warn!(
            abandoned,
            "Drain period over with messages still processing; cancelling and abandoning them."
        );
        cancel_in_progress(&drain.chat);
    } else {
        tracing::info!("Drained: no request or message in flight; exiting.");
    }
    Drained {
        abandoned_messages: abandoned,
    }
}

/// Cancels the messages a drain gives up, within a bound of its own: the
/// process is about to exit, and a slow agent service must not hold it.
fn cancel_in_progress(chat: &crate::chat::ChatService) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let cancelled = runtime
        .block_on(async { tokio::time::timeout(CANCEL_AT_EXIT, chat.cancel_in_progress()).await });
    if cancelled.is_err() {
        tracing::warn!("Cancelling the abandoned messages took too long; exiting without.");
    }
}

/// How long an exiting process spends posting its last spans: one post's
/// bound and a little more.
const SPAN_FLUSH_AT_EXIT: Duration = Duration::from_secs(3);

/// How long an exiting process spends cancelling what it abandons.
const CANCEL_AT_EXIT: Duration = Duration::from_secs(2);

/// How a process starts: fresh, or taking over the listening sockets of a
/// running gateway (`run --upgrade`).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// A new process binding its listeners.
    #[default]
    Fresh,
    /// A successor taking over the running process's sockets (`run --upgrade`).
    Upgrade,
}

fn build_server(cfg: &Settings, source: Option<&Path>, start: Start) -> Result<Built, String> {
    if start == Start::Fresh {
        ports_free(cfg)?;
    }
    let conf = ServerConf {
        threads: cfg.threads,
        // Pingora's default is 300 s: far longer than any chat may take.
        // One second more than the drain period, so that the drain watcher,
        // which ends the process at the drain period, is the one to decide
        // and can report what it abandons.
        grace_period_seconds: Some(cfg.shutdown.drain.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECONDS),
        upgrade_sock: cfg.upgrade_sock().to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: start == Start::Upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With `upgrade`, this waits (up to 5 s) for the running process to
    // hand over its listening sockets on SIGQUIT.
    server.bootstrap();

    let eai =
        EaiGateway::build(cfg.clone(), source.map(Path::to_path_buf)).map_err(|e| e.to_string())?;
    server.add_services(eai.background_services());
    let live = eai.live().clone();
    let drain = Drain {
        requests: live.inflight.clone(),
        chats: eai.chats(),
        period: cfg.shutdown.drain,
        chat: live.peek().chat.clone(),
        spans: eai.span_flush(),
    };
    let proxy = http_proxy(&server.configuration, GatewayProxy::new(eai));
    let mut proxy = Service::new(
        "eai-gateway".to_owned(),
        Front::new(live.clone(), proxy, &server.configuration),
    );
    // Pingora's default read buffer is 64 KiB per client connection: with
    // thousands of chats held open that dominates memory. Small JSON requests
    // fit in a few KiB; larger bodies still stream, in more reads.
    //
    // No write buffer in Pingora: it flushes a response header or body piece
    // with a `Content-Length` only when its 1,460-byte buffer fills or the
    // body ends, so a backend's slow answer would reach the client whole at
    // the end. `proxy::coalesce` buffers instead, and writes what each poll
    // of the connection's task wrote before the task waits.
    let buffers = L4BufferSettings::default()
        .read(cfg.read_buffer_bytes)
        .write(0);
    proxy.add_listener(ListenerConfig::tcp(cfg.listen.to_string()).l4_buffer(buffers));
    if let (Some(addr), Some(certificate)) = (cfg.tls.listen, &live.certificate) {
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .l4_buffer(buffers)
                .tls(certificate.listener_settings()),
        );
    }
    server.add_service(proxy);

    if let Some(addr) = &cfg.metrics_listen {
        let mut metrics = crate::metrics_http::service(live);
        metrics.add_tcp(&addr.to_string());
        server.add_service(metrics);
    }
    Ok(Built { server, drain })
}

/// Fails at once, naming the address, when a listener's port is taken:
/// Pingora would retry the bind every second forever while the process
/// looks started. (An upgrade takes its sockets over instead.)
fn ports_free(cfg: &Settings) -> Result<(), String> {
    let listeners = std::iter::once(("listen", cfg.listen))
        .chain(cfg.tls.listen.map(|a| ("tls.listen", a)))
        .chain(cfg.metrics_listen.map(|a| ("metrics_listen", a)));
    for (key, addr) in listeners {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Builds what a reload would build from `cfg`, and drops it: the errors
/// validation alone cannot see, such as a backend host that does not resolve.
pub fn check(cfg: &Settings) -> Result<(), String> {
    crate::agent_service::build(&cfg.agent_service).map_err(|e| format!("agent_service: {e}"))?;
    crate::tls::Certificate::load(&cfg.tls)?;
    RouteTable::new(cfg, None).map(drop)
}

/// Applies the database migrations of `cfg`, on a runtime of its own (Pingora
/// builds one per service later): what `eai-gateway migrate` and `run` do.
pub fn migrate(cfg: &Settings) -> Result<(), SetupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SetupError::Migration(e.to_string()))?;
    runtime
        .block_on(crate::mapping::migrate(&cfg.database))
        .map_err(|e| SetupError::Migration(e.to_string()))
}

pub use crate::reload::refuse_restart_only;
