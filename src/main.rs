//! The `deprovisiond` binary: reads the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = deprovisiond::cli::Cli::parse();
    deprovisiond::telemetry::init();
    match deprovisiond::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on: the error and its causes, each said once.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("deprovisiond: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
