//! The `deprovisiond` binary: reads the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = deprovisiond::cli::Cli::parse();
    deprovisiond::telemetry::init();
    match deprovisiond::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on; details were logged where they happened.
            eprintln!("deprovisiond: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
