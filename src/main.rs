use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eai_gateway::settings::{Dialect, Settings};
use eai_gateway::{demo, mapping, server};

/// jemalloc, as Pingora runs in production: with thousands of connections
/// each holding a few small buffers for minutes, glibc's malloc fragments
/// far more (measured in the README's benchmark notes).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "eai-gateway",
    version,
    about = "Pingora gateway giving every chat user one long-lived agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (applies pending migrations first).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file (with the environment overrides) and exit.
    CheckConfig { file: PathBuf },
    /// Apply the database migrations and exit.
    Migrate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start the simulator and the gateway on loopback with a SQLite file.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9091")]
        metrics_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8300")]
        simulator_listen: SocketAddr,
        #[arg(long, default_value = "eai", value_parser = parse_dialect)]
        dialect: Dialect,
        /// Simulated agent processing time.
        #[arg(long, default_value_t = 300)]
        delay_ms: u64,
        #[arg(long, default_value = "eai-gateway-demo.db")]
        database: PathBuf,
    },
    /// Run only the agent-service simulator (both dialects).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8300")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 300)]
        delay_ms: u64,
        /// Worker threads of the simulator's runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    eai_gateway::init_logging();
    match Cli::parse().command {
        Command::CheckConfig { file } => match load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Migrate { config } => match load(&config) {
            Ok(cfg) => match migrate(&cfg) {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Err(code) => code,
        },
        Command::Run { config } => match load(&config) {
            Ok(cfg) => serve(&cfg),
            Err(code) => code,
        },
        Command::Demo {
            listen,
            metrics_listen,
            simulator_listen,
            dialect,
            delay_ms,
            database,
        } => {
            let opts = demo::DemoOptions {
                listen,
                metrics_listen,
                simulator_listen,
                dialect,
                delay_ms,
                database,
            };
            let sim = match demo::start_simulator(opts.simulator_listen, opts.delay_ms, 1) {
                Ok(addr) => addr,
                Err(e) => return fail(&e),
            };
            let cfg = demo::demo_settings(&opts, sim);
            println!("{}", demo::banner(&cfg, sim));
            serve(&cfg)
        }
        Command::Simulate {
            listen,
            delay_ms,
            threads,
        } => match demo::start_simulator(listen, delay_ms, threads) {
            Ok(addr) => {
                println!("simulator listening on http://{addr}");
                loop {
                    std::thread::park();
                }
            }
            Err(e) => fail(&e),
        },
    }
}

fn load(path: &std::path::Path) -> Result<Settings, ExitCode> {
    Settings::load(path).map_err(|e| {
        eprintln!("config error: {e}");
        ExitCode::from(2)
    })
}

fn migrate(cfg: &Settings) -> Result<(), String> {
    // A throwaway runtime: Pingora builds its own per service later.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(mapping::migrate(&cfg.database))
        .map_err(|e| format!("database migration failed: {e}"))
}

fn serve(cfg: &Settings) -> ExitCode {
    if let Err(e) = migrate(cfg) {
        return fail(&e);
    }
    tracing::info!(listen = %cfg.listen, metrics = ?cfg.metrics_listen, "Gateway starting.");
    match server::run(cfg) {
        Ok(never) => match never {},
        Err(e) => fail(&e),
    }
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    Dialect::parse(s).ok_or_else(|| format!("{s:?} is not one of letta, eai"))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
