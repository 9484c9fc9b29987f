//! The `deprovisiond` binary: reads the command line and runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = deprovisiond::cli::Cli::parse();
    // Set up before the runtime and dropped after it: the span exporter flushes from a plain thread.
    let _telemetry = deprovisiond::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deprovisiond: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(deprovisiond::cli::run(cli));
    drop(runtime);
    match result {
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
