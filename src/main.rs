//! The `roomcast` binary: parse the command line, load the configuration, start
//! telemetry, bind the listeners and hand over to the library. Subcommands: `serve`
//! (default), `config`, `probe`, `token` (the load generator is its own binary,
//! `roomcast-bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roomcast::config::{Config, EXIT_CONFIG};
use tokio_util::sync::CancellationToken;

/// jemalloc: it gives memory freed after a burst (a join storm, a large backlog) back to
/// the system within seconds (`dirty_decay_ms`), where glibc's malloc keeps much of it in
/// its per-thread arenas.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "roomcast",
    version,
    about = "A horizontally scalable WebSocket chat gateway"
)]
struct Cli {
    /// TOML configuration file (also `ROOMCAST_CONFIG`); environment variables override it.
    #[arg(long, global = true, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print the effective configuration with secrets redacted, or validate a file.
    Config {
        /// Validate this file (plus the environment) and exit 0, or 64 naming the key.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
    /// Join a room, send a message and wait for it to come back (exit 0 on success).
    Probe(roomcast::probe::ProbeArgs),
    /// Call the gateway's server API (/api/v1): publish into a room, read its history.
    Api(roomcast::api_cli::ApiArgs),
    /// Mint an HS256 token with the configured secret (auth.jwt.secret or secret_file),
    /// for development and `helm test`; prints it on stdout.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// The display name (`name`).
        #[arg(long)]
        name: String,
        /// Room patterns the user may join, comma-separated (`a,team-*`); default all.
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Room patterns the user may send to, comma-separated; default every joined room.
        #[arg(long, value_delimiter = ',')]
        publish: Option<Vec<String>>,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(cli.config)),
        Command::Config { check } => config_command(cli.config, check),
        Command::Probe(mut args) => {
            if args.mint {
                let config = match load(cli.config.as_deref()) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let request = roomcast::TokenRequest {
                    sub: "roomcast-probe".into(),
                    name: "probe".into(),
                    rooms: None,
                    publish: None,
                    ttl: std::time::Duration::from_secs(300),
                };
                match roomcast::mint_hs256(&config.auth.jwt, &request) {
                    Ok(token) => args.token = Some(token),
                    Err(e) => {
                        eprintln!("roomcast: {e:#}");
                        return ExitCode::from(EXIT_CONFIG as u8);
                    }
                }
            }
            report(runtime.block_on(roomcast::probe::probe(args)))
        }
        Command::Api(args) => report(runtime.block_on(roomcast::api_cli::run(args))),
        Command::Token {
            sub,
            name,
            rooms,
            publish,
            ttl,
        } => token_command(
            cli.config,
            roomcast::TokenRequest {
                sub,
                name,
                rooms,
                publish,
                ttl,
            },
        ),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|e| {
        eprintln!("roomcast: {e}");
        ExitCode::from(EXIT_CONFIG as u8)
    })
}

fn config_command(file: Option<PathBuf>, check: Option<PathBuf>) -> ExitCode {
    match check {
        Some(path) => match load(Some(&path)) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => match load(file.as_deref()) {
            Ok(cfg) => {
                print!("{}", cfg.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

fn token_command(file: Option<PathBuf>, request: roomcast::TokenRequest) -> ExitCode {
    let config = match load(file.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match roomcast::mint_hs256(&config.auth.jwt, &request) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roomcast: {e:#}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
    }
}

/// Every connection is an open file: raise the soft limit to the hard limit (containers
/// often start at 1,024 with a much higher hard limit), and say what it is.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}

/// Binds a listener with the largest accept queue the kernel allows
/// (`net.core.somaxconn` caps it), so a reconnect storm's SYNs are queued, not dropped.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

async fn serve(file: Option<PathBuf>) -> ExitCode {
    let config = match load(file.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let telemetry = match roomcast::telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("roomcast: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    raise_open_files_limit();
    // A port in use names the key to change, not only the address.
    let bind = |key: &'static str, addr| async move {
        listen(addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr} ({key}; set it in the file or as ROOMCAST_{}): {e}",
                key.to_uppercase().replace('.', "__")
            )
        })
    };
    let listeners = match (
        bind("server.listen", config.server.listen).await,
        bind("admin.listen", config.admin.listen).await,
    ) {
        (Ok(client), Ok(admin)) => roomcast::Listeners { client, admin },
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    roomcast::shutdown::spawn_handler(shutdown.clone());
    let result = roomcast::run(listeners, config, shutdown).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast: {e}");
            ExitCode::FAILURE
        }
    }
}
