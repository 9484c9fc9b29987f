//! `azure-iot-sim`: the simulator of DPS and IoT Hub on its own.

use clap::Parser;

/// A stateful simulator of Azure IoT Hub Device Provisioning Service (service and device APIs) and the
/// IoT Hub identity registry, on their real wire format. Prints its endpoints as JSON.
#[derive(Debug, Parser)]
#[command(name = "azure-iot-sim", version, about)]
struct Cli {
    #[command(flatten)]
    args: azure_iot_sim::cli::SimulateArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let run = azure_iot_sim::cli::run(
        cli.args,
        azure_iot_sim::SimConfig::demo(),
        azure_iot_sim::cli::shutdown_signal(),
    );
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("azure-iot-sim: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
