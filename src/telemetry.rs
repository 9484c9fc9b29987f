//! Logging setup: `RUST_LOG` filters, `DEPROVISIOND_LOG_FORMAT=json` for machine-readable logs, and (feature
//! `otlp`) span export over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps span export running; dropping it flushes the spans still buffered (hold it for the process's life).
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("deprovisiond: flushing spans to the OTLP endpoint failed: {e}");
        }
    }
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init() -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let json = std::env::var("DEPROVISIOND_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only on a terminal: log files and CI output stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);

    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match otlp::tracer() {
            Ok(Some((tracer, provider))) => (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            ),
            Ok(None) => (None, None),
            Err(e) => {
                eprintln!("deprovisiond: span export disabled: {e}");
                (None, None)
            }
        };
        let _ = registry.with(layer).try_init();
        TelemetryGuard { provider }
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = registry.try_init();
        TelemetryGuard {}
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

    /// The standard OpenTelemetry variables that name where spans go.
    const ENDPOINT_VARS: [&str; 2] = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ];

    /// A tracer exporting in batches over OTLP/HTTP, or `None` when no endpoint is configured.
    pub fn tracer() -> Result<Option<(Tracer, SdkTracerProvider)>, String> {
        if !ENDPOINT_VARS
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|e| !e.is_empty()))
        {
            return Ok(None);
        }
        // The exporter reads the endpoint, headers and timeout from the standard variables itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| e.to_string())?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("deprovisiond")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some((provider.tracer("deprovisiond"), provider)))
    }
}

/// The process's Prometheus recorder, installed on first use: counters and histograms recorded through
/// the `metrics` macros anywhere in the process end up in `GET /metrics`.
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latencies of Azure calls and steps: 5 ms to 2 min.
        const BUCKETS: &[f64] = &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        let builder = match builder.set_buckets(BUCKETS) {
            Ok(b) => b,
            // Only an empty bucket list is refused; the list above is not empty.
            Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed; /metrics shows only database gauges"
            );
        }
        handle
    })
}
