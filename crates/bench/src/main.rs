//! The `roomcast-bench` binary: parses the command line ([`BenchArgs`]), runs the load
//! generator on a multi-thread tokio runtime and turns the outcome into the exit status:
//! 0 on success, 1 on an error or (with `--fail-on-loss`) a lossy run, 2 on a usage error.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use roomcast_bench::BenchArgs;

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    version,
    after_help = "Example: 2,000 users in 20 rooms over two replicas, publishers at stepped rates:\n  \
        roomcast-bench --url ws://127.0.0.1:8080/ws --url ws://127.0.0.1:8081/ws \\\n    \
        --connections 2000 --rooms 20 --publishers 5 --rate-steps 100,200,400 --duration 15s\n\n\
        See BENCHMARKS.md."
)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(roomcast_bench::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
