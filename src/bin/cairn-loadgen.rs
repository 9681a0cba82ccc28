//! `cairn-loadgen`: drive a Cairn server (or an embedded one) with concurrent clients and
//! report what conditional appends and hot keys cost. Everything is in `cairn_loadgen`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cairn_loadgen::Args::parse();
    // The embedded server logs through tracing: its warnings and errors belong on stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cairn_loadgen::run(args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}
