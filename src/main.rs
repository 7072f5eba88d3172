use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eai_gateway::server;
use eai_gateway::settings::{Dialect, Settings};

mod demo;

/// jemalloc, as Pingora runs in production: with thousands of connections
/// each holding a few small buffers for minutes, glibc's malloc fragments
/// far more (measured in bench/README.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "eai-gateway",
    version = eai_gateway::VERSION,
    about = "Pingora gateway giving every chat user one long-lived agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (applies pending migrations first). SIGHUP reloads
    /// the config file; SIGQUIT hands the listening sockets to a process
    /// started with `--upgrade`, then drains; SIGTERM drains and exits.
    Run {
        /// The YAML config file (environment variables override it).
        #[arg(long)]
        config: PathBuf,
        /// Take over the listening sockets of the running gateway, which
        /// hands them over on `kill -QUIT <its pid>` (within 5 s).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file as `run` and a reload would (with the
    /// environment overrides and token files) and exit.
    CheckConfig {
        /// The YAML config file.
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        /// The same, as an option (as `run` takes it).
        #[arg(long, conflicts_with = "file")]
        config: Option<PathBuf>,
        /// The file the running gateway was started from: also report every
        /// key that a reload (SIGHUP) from FILE would refuse to change.
        #[arg(long, value_name = "RUNNING_FILE")]
        against: Option<PathBuf>,
    },
    /// Apply the database migrations and exit.
    Migrate {
        /// The YAML config file (its `database:` section and `DATABASE_URL`).
        #[arg(long)]
        config: PathBuf,
    },
    /// The user → agent mappings: find users stored under more than one
    /// spelling, resolve them, and move mappings between stores.
    #[command(subcommand)]
    Mappings(MappingsCommand),
    /// The agents at the agent service: find those no mapping references.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Start the simulator and the gateway on loopback with a SQLite file.
    Demo {
        /// Public listener of the gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Prometheus listener of the gateway.
        #[arg(long, default_value = "127.0.0.1:9091")]
        metrics_listen: SocketAddr,
        /// Listener of the bundled agent-service simulator.
        #[arg(long, default_value = "127.0.0.1:8300")]
        simulator_listen: SocketAddr,
        /// Agent-service dialect the gateway speaks: eai or letta.
        #[arg(long, default_value = "eai", value_parser = parse_dialect)]
        dialect: Dialect,
        /// Simulated agent processing time.
        #[arg(long, default_value_t = 300)]
        delay_ms: u64,
        /// The SQLite database: a file path (created when missing) or a
        /// `sqlite:` URL.
        #[arg(long, default_value = "eai-gateway-demo.db")]
        database: PathBuf,
    },
    /// Run only the agent-service simulator (both dialects).
    Simulate {
        /// Listener of the simulator.
        #[arg(long, default_value = "127.0.0.1:8300")]
        listen: SocketAddr,
        /// Simulated agent processing time.
        #[arg(long, default_value_t = 300)]
        delay_ms: u64,
        /// Worker threads of the simulator's runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// List the agents tagged `eai-gateway` that no mapping references
    /// (Letta only), then a count; exits 1 when some are left.
    Reconcile {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// Delete them at the agent service (never without this flag).
        #[arg(long)]
        delete: bool,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
        /// Skip agents younger than this (default: agents.orphan_min_age_seconds).
        #[arg(long, value_name = "SECONDS")]
        min_age_seconds: Option<u64>,
    },
}

#[derive(Subcommand)]
enum MappingsCommand {
    /// List every user with more than one mapping row (masked), and rows no
    /// request can reach; exits 1 when there are doubles.
    Check {
        /// The YAML config file (its `database:`, `users:` and `agents:`).
        #[arg(long)]
        config: PathBuf,
    },
    /// Keep one row of a user with several (the one named, or the one
    /// `agents.duplicate_policy` serves) and remove the others.
    Resolve {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// The user to resolve, in any accepted spelling.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        user: Option<String>,
        /// Every user with more than one row, each by the policy.
        #[arg(long)]
        all: bool,
        /// The agent to keep (with --user); without it, the policy's.
        #[arg(long, requires = "user")]
        keep: Option<String>,
        /// Also delete the removed rows' agents at the agent service.
        #[arg(long)]
        delete_agents: bool,
    },
    /// Write every mapping as JSON lines.
    Export {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// The file to write (created or truncated); standard output if absent.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Import mappings from JSON lines (as exported) or CSV with a
    /// `user_number,agent_id` header, in one transaction.
    Import {
        /// The YAML config file.
        #[arg(long)]
        config: PathBuf,
        /// The file to import.
        file: PathBuf,
        /// Overwrite a user's different stored mapping (never by default).
        #[arg(long)]
        replace: bool,
    },
}

/// The exit status of a gateway that stopped but gave up work in progress
/// (messages still processing at the end of the drain period). 1 and 2 are
/// the operator commands' findings and errors.
const EXIT_ABANDONED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The operator commands print their result on standard output.
    match cli.command {
        Command::Mappings(_) | Command::Agents(_) => eai_gateway::init_logging_to_stderr(),
        _ => eai_gateway::init_logging(),
    }
    match cli.command {
        Command::CheckConfig {
            file,
            config,
            against,
        } => {
            let Some(file) = file.or(config) else {
                return fail("check-config needs a config file");
            };
            check_config(&file, against.as_deref())
        }
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
        Command::Run { config, upgrade } => match load(&config) {
            Ok(cfg) => {
                let start = if upgrade {
                    server::Start::Upgrade
                } else {
                    server::Start::Fresh
                };
                serve(&cfg, Some(&config), start)
            }
            Err(code) => code,
        },
        Command::Mappings(command) => mappings(command),
        Command::Agents(AgentsCommand::Reconcile {
            config,
            delete,
            json,
            min_age_seconds,
        }) => {
            let what = eai_gateway::admin::Reconcile {
                delete,
                json,
                min_age: min_age_seconds.map(std::time::Duration::from_secs),
            };
            let mut out = std::io::stdout().lock();
            exit_of(load(&config).map(|cfg| eai_gateway::admin::reconcile(&cfg, &what, &mut out)))
        }
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
            serve(&cfg, None, server::Start::Fresh)
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
    server::migrate(cfg).map_err(|e| e.to_string())
}

/// What a reload would do with `file`, without a running gateway: parse,
/// validate, build the routes and clients; with `against`, also compare
/// the restart-only keys.
fn check_config(file: &Path, against: Option<&Path>) -> ExitCode {
    let cfg = match load(file) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    if let Err(e) = server::check(&cfg) {
        eprintln!("config error: {e}");
        return ExitCode::from(2);
    }
    if let Some(running) = against {
        let running = match load(running) {
            Ok(cfg) => cfg,
            Err(code) => return code,
        };
        if let Err(e) = server::refuse_restart_only(&running, &cfg) {
            eprintln!("reload would be refused: {e}");
            return ExitCode::from(2);
        }
    }
    println!("{}: ok", file.display());
    ExitCode::SUCCESS
}

fn serve(cfg: &Settings, source: Option<&Path>, start: server::Start) -> ExitCode {
    if let Err(e) = migrate(cfg) {
        return fail(&e);
    }
    let metrics = cfg.metrics_listen.map(|a| a.to_string());
    tracing::info!(listen = %cfg.listen, metrics, "Gateway starting.");
    match server::run(cfg, source, start) {
        Ok(drained) if drained.is_clean() => ExitCode::SUCCESS,
        // Stopped, but with work given up: a supervisor should know.
        Ok(_) => ExitCode::from(EXIT_ABANDONED),
        Err(e) => fail(&e),
    }
}

fn mappings(command: MappingsCommand) -> ExitCode {
    use eai_gateway::admin::{self, Outcome};
    let mut out = std::io::stdout().lock();
    let result = match command {
        MappingsCommand::Check { config } => load(&config).map(|cfg| admin::check(&cfg, &mut out)),
        MappingsCommand::Resolve {
            config,
            user,
            all: _,
            keep,
            delete_agents,
        } => load(&config).map(|cfg| {
            let what = admin::Resolve {
                user,
                keep,
                delete_agents,
            };
            admin::resolve(&cfg, &what, &mut out)
        }),
        MappingsCommand::Export { config, output } => load(&config).map(|cfg| {
            let written = match &output {
                Some(path) => std::fs::File::create(path)
                    .map_err(|e| format!("{}: cannot be written: {e}", path.display()))
                    .and_then(|file| {
                        let mut file = std::io::BufWriter::new(file);
                        admin::export(&cfg, &mut file)
                    }),
                None => admin::export(&cfg, &mut out),
            };
            written.map(|n| {
                eprintln!("exported {n} mappings");
                Outcome::Clean
            })
        }),
        MappingsCommand::Import {
            config,
            file,
            replace,
        } => load(&config).map(|cfg| admin::import(&cfg, &file, replace, &mut out)),
    };
    exit_of(result)
}

/// The exit status of an operator command: 0 clean, 1 findings, 2 could not run.
fn exit_of(result: Result<Result<eai_gateway::admin::Outcome, String>, ExitCode>) -> ExitCode {
    use eai_gateway::admin::Outcome;
    match result {
        Ok(Ok(Outcome::Clean)) => ExitCode::SUCCESS,
        Ok(Ok(Outcome::Findings)) => ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(code) => code,
    }
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    Dialect::parse(s).ok_or_else(|| format!("{s:?} is not one of letta, eai"))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
