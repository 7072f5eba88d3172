//! `eai-gateway demo`: the simulator and the gateway on loopback with a
//! SQLite file, plus curl commands to paste.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use eai_gateway::settings::{
    AgentServiceSettings, DatabaseUrl, Dialect, Settings, UpstreamSettings,
};
use eai_gateway::sim::{SimSettings, Simulator};

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub simulator_listen: SocketAddr,
    pub dialect: Dialect,
    pub delay_ms: u64,
    pub database: PathBuf,
}

/// The defaults, pointed at the simulator for both the agent service and
/// pass-through.
pub fn demo_settings(opts: &DemoOptions, simulator: SocketAddr) -> Settings {
    let url = reqwest::Url::parse(&format!("http://{simulator}"))
        .unwrap_or_else(|_| unreachable!("a socket address makes a valid URL"));
    let mut settings = Settings::new(AgentServiceSettings::new(opts.dialect, url));
    settings.listen = opts.listen;
    settings.metrics_listen = Some(opts.metrics_listen);
    settings.shutdown.drain = Duration::from_secs(1);
    let database = opts.database.display().to_string();
    settings.database.url = if database.starts_with("sqlite:") {
        DatabaseUrl::Sqlite(database)
    } else {
        DatabaseUrl::Sqlite(format!("sqlite://{database}"))
    };
    settings.upstreams.insert(
        "simulator".into(),
        UpstreamSettings::with_backends([simulator.to_string()]),
    );
    settings.default_upstream = Some("simulator".into());
    settings
}

/// Starts the simulator on its own runtime thread; returns its address.
pub fn start_simulator(
    addr: SocketAddr,
    delay_ms: u64,
    threads: usize,
) -> Result<SocketAddr, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bound = runtime
        .block_on(Simulator::new(SimSettings::with_delay(delay_ms)).spawn(&addr.to_string()))
        .map_err(|e| format!("simulator listen {addr}: {e}"))?;
    // The runtime must outlive this function: park it on a thread for the
    // life of the process.
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    Ok(bound)
}

pub fn banner(settings: &Settings, simulator: SocketAddr) -> String {
    let gw = settings.listen;
    let metrics = settings
        .metrics_listen
        .map_or_else(|| "-".to_owned(), |m| m.to_string());
    format!(
        "\nEAI Gateway demo\n  gateway    http://{gw}\n  metrics    http://{metrics}/metrics\n  \
         simulator  http://{simulator} ({} dialect)\n  database   {}\n\nTry:\n\
         curl -s -X POST http://{gw}/eai-gateway/chat -H 'content-type: application/json' \
         -d '{{\"user_number\": \"+5521999999999\", \"message\": \"Olá!\"}}'\n\
         curl -s http://{gw}/eai-gateway/agent/5521999999999\n\
         curl -s -X DELETE -i http://{gw}/eai-gateway/agent/5521999999999\n\
         curl -s http://{gw}/v1/health/        # passed through to the simulator\n\
         curl -s http://{metrics}/metrics | grep eai_gateway_\n\nCtrl-C stops.\n",
        settings.agent_service.dialect.as_str(),
        settings.database.url.redacted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_settings_are_valid() {
        let opts = DemoOptions {
            listen: "127.0.0.1:8080".parse().unwrap(),
            metrics_listen: "127.0.0.1:9091".parse().unwrap(),
            simulator_listen: "127.0.0.1:8300".parse().unwrap(),
            dialect: Dialect::Letta,
            delay_ms: 300,
            database: "demo.db".into(),
        };
        let settings = demo_settings(&opts, opts.simulator_listen);
        settings.validate().unwrap();
        assert_eq!(
            settings.agent_service.url.as_str(),
            "http://127.0.0.1:8300/"
        );
    }
}
