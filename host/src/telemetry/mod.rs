//! OpenTelemetry: the GenAI spans and metrics of every task, whatever its plugins, exported
//! over OTLP (gRPC or HTTP/protobuf), or printed as a tree by `grip run --trace`.
//!
//! The spans follow the GenAI semantic conventions of semantic-conventions v1.41.0 (status
//! Development; what `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` selects):
//! `invoke_agent` for a task, one `chat <model>` CLIENT span per prompt attempt, one
//! `execute_tool <function>` span per tool call (see [`genai`]). They are `tracing` spans of the
//! target [`TARGET`], turned into OpenTelemetry spans by `tracing-opentelemetry`; the `fmt` log
//! never sees them, and no other span of the host is exported.
//!
//! Off unless an endpoint is configured (`[telemetry] endpoint` in grip.toml, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or `--trace` is given.
//! When off, [`genai`] makes no span and records nothing: one relaxed load per call site.

pub mod genai;
mod propagation;
mod tree;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

pub use propagation::{is_valid_traceparent, traceparent_of};

/// The `tracing` target of the spans that are exported; nothing else is.
pub const TARGET: &str = "gen_ai";

/// The OTLP wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP over gRPC (default port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (default port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `[telemetry]` in grip.toml. Every field is optional; the standard `OTEL_*` variables fill
/// what is not set here (`OTEL_EXPORTER_OTLP_ENDPOINT`, `_PROTOCOL`, `_HEADERS`, `_TIMEOUT`,
/// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector: for gRPC its address (`http://host:4317`), for HTTP its base URL
    /// (`http://host:4318`, to which `/v1/traces` and `/v1/metrics` are added).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else HTTP).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// `service.name` (default: `OTEL_SERVICE_NAME`, else `grip`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Record the messages, tool arguments and tool results on the spans
    /// (`gen_ai.input.messages` ...). They hold whatever users and tools said: off by default.
    #[serde(default)]
    pub capture_content: bool,
    /// How often metrics are exported (default 60 s, or `OTEL_METRIC_EXPORT_INTERVAL`).
    #[serde(default)]
    pub metrics_interval_ms: Option<u64>,
}

/// An environment variable that is set and not blank.
fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

impl TelemetryConfig {
    /// Whether spans go to a collector: an endpoint for them is set here or in the
    /// environment, and `OTEL_SDK_DISABLED` is not `true`.
    pub fn exports(&self) -> bool {
        self.exports_signal(Signal::Traces) || self.exports_signal(Signal::Metrics)
    }

    fn exports_signal(&self, signal: Signal) -> bool {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return false;
        }
        let own = match signal {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        };
        self.endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || env(own).is_some()
    }

    /// `capture_content`, or the variable the GenAI instrumentations of other languages read.
    fn captures_content(&self) -> bool {
        self.capture_content
            || env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_else(|| {
            match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
                Ok("grpc") => Protocol::Grpc,
                _ => Protocol::HttpProtobuf,
            }
        })
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static CONTENT: AtomicBool = AtomicBool::new(false);

/// Whether GenAI spans and metrics are being made.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether message content goes on the spans.
pub fn capture_content() -> bool {
    CONTENT.load(Ordering::Relaxed)
}

/// What telemetry was started; [`Telemetry::shutdown`] flushes it (and prints the tree).
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    tree: Option<tree::Collector>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.meter.is_some())
            .field("tree", &self.tree.is_some())
            .finish()
    }
}

/// The OpenTelemetry layer, boxed: its type names the tracer and the filter.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// A layer for the host's subscriber that turns the [`TARGET`] spans into OpenTelemetry
/// spans, and the handle that ends it. `None` (and an empty handle) when `config` exports
/// nothing and `tree` is false. Call before any task runs; the metrics instruments are made
/// here too.
///
/// # Errors
/// An exporter that cannot be built (a malformed endpoint), saying which.
pub fn layer<S>(
    config: &TelemetryConfig,
    tree: bool,
) -> anyhow::Result<(Option<BoxedLayer<S>>, Telemetry)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let exports = config.exports();
    if !exports && !tree {
        return Ok((None, Telemetry::default()));
    }
    crate::tls::install_provider();
    let resource = resource(config);
    let mut traces = SdkTracerProvider::builder().with_resource(resource.clone());
    // Every task is recorded unless the operator set a sampler: a caller's `traceparent`
    // marked "not sampled" must not hide its tasks from the operator's backend.
    if env("OTEL_TRACES_SAMPLER").is_none() {
        traces = traces.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn);
    }
    let mut out = Telemetry::default();
    if config.exports_signal(Signal::Traces) {
        traces = traces.with_batch_exporter(span_exporter(config)?);
    }
    if config.exports_signal(Signal::Metrics) {
        let reader = PeriodicReader::builder(metric_exporter(config)?);
        let reader = match config.metrics_interval_ms {
            Some(ms) => reader.with_interval(Duration::from_millis(ms.max(100))),
            None => reader,
        };
        let meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader.build())
            .build();
        opentelemetry::global::set_meter_provider(meter.clone());
        genai::init_metrics();
        out.meter = Some(meter);
    }
    if tree {
        let collector = tree::Collector::default();
        traces = traces.with_simple_exporter(collector.clone());
        out.tree = Some(collector);
    }
    let provider = traces.build();
    let tracer = provider.tracer("grip");
    out.tracer = Some(provider);
    ON.store(true, Ordering::Relaxed);
    CONTENT.store(config.captures_content(), Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO),
        );
    Ok((Some(Box::new(layer)), out))
}

impl Telemetry {
    /// Exports what is left and stops the exporters; prints the span tree of `--trace` to
    /// stderr. A collector that is away costs at most its export timeout here.
    pub fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        if let Some(Err(e)) = self.tracer.as_ref().map(SdkTracerProvider::shutdown) {
            tracing::warn!("telemetry: exporting the last spans failed: {e}");
        }
        if let Some(Err(e)) = self.meter.as_ref().map(SdkMeterProvider::shutdown) {
            tracing::warn!("telemetry: exporting the last metrics failed: {e}");
        }
        if let Some(tree) = &self.tree {
            eprint!("{}", tree.render());
        }
    }
}

/// The SDK's resource (which reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`), with
/// `[telemetry] service_name` over them, or `grip` where neither names the service.
fn resource(config: &TelemetryConfig) -> Resource {
    let named_by_env = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    let b = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    match &config.service_name {
        Some(n) => b.with_service_name(n.clone()),
        None if !named_by_env => b.with_service_name("grip"),
        None => b,
    }
    .build()
}

/// `base` + `/v1/<signal>` for HTTP, as the OTLP spec has it for a base endpoint.
fn http_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

/// The tonic channel spawns its connection task on the runtime current at build time: the
/// host's background runtime, which lives as long as the process.
fn on_background<T>(build: impl FnOnce() -> T) -> anyhow::Result<T> {
    let rt = crate::isolation::background_runtime().map_err(anyhow::Error::msg)?;
    let _entered = rt.enter();
    Ok(build())
}

/// One OTLP exporter builder made for `config`: gRPC (its channel on the background runtime)
/// or HTTP/protobuf (the signal's path added to a base endpoint); the environment fills what
/// the config leaves out.
macro_rules! otlp_exporter {
    ($builder:expr, $config:expr, $signal:literal) => {{
        let config: &TelemetryConfig = $config;
        let built = match config.protocol() {
            Protocol::Grpc => on_background(|| {
                let b = $builder
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                match &config.endpoint {
                    Some(e) => b.with_endpoint(e.clone()).build(),
                    None => b.build(),
                }
            })?,
            Protocol::HttpProtobuf => {
                let b = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match &config.endpoint {
                    Some(e) => b.with_endpoint(http_url(e, $signal)).build(),
                    None => b.build(),
                }
            }
        };
        built.map_err(|e| anyhow::anyhow!("telemetry: the OTLP {} exporter: {e}", $signal))
    }};
}

fn span_exporter(config: &TelemetryConfig) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    otlp_exporter!(
        opentelemetry_otlp::SpanExporter::builder(),
        config,
        "traces"
    )
}

fn metric_exporter(config: &TelemetryConfig) -> anyhow::Result<opentelemetry_otlp::MetricExporter> {
    otlp_exporter!(
        opentelemetry_otlp::MetricExporter::builder(),
        config,
        "metrics"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_base_endpoint_gets_the_signal_path() {
        assert_eq!(
            http_url("http://c:4318/", "traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http_url("http://c:4318", "metrics"),
            "http://c:4318/v1/metrics"
        );
    }

    #[test]
    fn the_protocol_names_are_the_otel_ones() {
        let c: TelemetryConfig = toml::from_str("protocol = \"grpc\"").unwrap_or_default();
        assert_eq!(c.protocol, Some(Protocol::Grpc));
        let c: TelemetryConfig = toml::from_str("protocol = \"http/protobuf\"").unwrap_or_default();
        assert_eq!(c.protocol, Some(Protocol::HttpProtobuf));
        assert!(toml::from_str::<TelemetryConfig>("protocol = \"http/json\"").is_err());
    }
}
