//! `eai-gateway demo`: the simulator and the gateway on loopback with a
//! SQLite file, plus curl commands to paste.

use crate::config::Config;
use crate::sim::{SimSettings, Simulator};

pub struct DemoOptions {
    pub listen: String,
    pub metrics_listen: String,
    pub simulator_listen: String,
    pub dialect: String,
    pub delay_ms: u64,
    pub database: String,
}

pub fn demo_config(opts: &DemoOptions, simulator: &str) -> Result<Config, String> {
    let yaml = format!(
        "listen: {listen}\nmetrics_listen: {metrics}\nshutdown: {{drain_seconds: 1}}\n\
         database: {{url: 'sqlite://{db}'}}\n\
         agent_service: {{dialect: {dialect}, url: 'http://{sim}'}}\n\
         upstreams: {{simulator: {{backends: ['{sim}']}}}}\n\
         default_upstream: simulator\n",
        listen = opts.listen,
        metrics = opts.metrics_listen,
        db = opts.database,
        dialect = opts.dialect,
        sim = simulator,
    );
    let config = Config::from_yaml(&yaml).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Starts the simulator on its own runtime thread; returns its address.
pub fn start_simulator(
    addr: &str,
    delay_ms: u64,
    threads: usize,
) -> Result<std::net::SocketAddr, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bound = runtime
        .block_on(Simulator::new(SimSettings::with_delay(delay_ms)).spawn(addr))
        .map_err(|e| format!("simulator listen {addr}: {e}"))?;
    // The runtime must outlive this function: park it on a thread for the
    // life of the process.
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    Ok(bound)
}

pub fn banner(config: &Config, simulator: &str) -> String {
    let gw = &config.listen;
    let metrics = config.metrics_listen.as_deref().unwrap_or("-");
    format!(
        "\nEAI Gateway demo\n  gateway    http://{gw}\n  metrics    http://{metrics}/metrics\n  \
         simulator  http://{simulator} ({} dialect)\n  database   {}\n\nTry:\n\
         curl -s -X POST http://{gw}/eai-gateway/chat -H 'content-type: application/json' \
         -d '{{\"user_number\": \"+5521999999999\", \"message\": \"Olá!\"}}'\n\
         curl -s http://{gw}/eai-gateway/agent/5521999999999\n\
         curl -s -X DELETE -i http://{gw}/eai-gateway/agent/5521999999999\n\
         curl -s http://{gw}/v1/health/        # passed through to the simulator\n\
         curl -s http://{metrics}/metrics | grep eai_gateway_\n\nCtrl-C stops.\n",
        config.agent_service.dialect.as_str(),
        config.database.url
    )
}
