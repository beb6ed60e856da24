//! `grip run --trace`: the run's spans kept in memory and printed as a tree when it ends, for
//! people without a trace backend.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The attributes worth a line in a terminal, in this order.
const SHOWN: &[&str] = &[
    "gen_ai.provider.name",
    "gen_ai.response.model",
    "grip.attempt",
    "gen_ai.tool.call.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
    "grip.path",
    "error.type",
];

/// Every span of the run, as the SDK hands them over (each when it ends).
#[derive(Debug, Clone, Default)]
pub(super) struct Collector(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collector {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        crate::isolation::lock(&self.0).extend(batch);
        Ok(())
    }
}

impl Collector {
    /// The spans as an indented tree, roots first, children in start order.
    pub(super) fn render(&self) -> String {
        let mut spans = crate::isolation::lock(&self.0).clone();
        spans.sort_by_key(|s| s.start_time);
        let mut out = String::from("trace:\n");
        let known: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
        for root in spans.iter().filter(|s| !known.contains(&s.parent_span_id)) {
            write_span(&mut out, &spans, root, 1);
        }
        out
    }
}

fn write_span(out: &mut String, spans: &[SpanData], span: &SpanData, depth: usize) {
    let took = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let _ = write!(
        out,
        "{:indent$}{}  {:.1} ms",
        "",
        span.name,
        took.as_secs_f64() * 1000.0,
        indent = depth * 2
    );
    for key in SHOWN {
        if let Some(kv) = span.attributes.iter().find(|kv| kv.key.as_str() == *key) {
            let _ = write!(out, "  {key}={}", kv.value);
        }
    }
    if let Status::Error { description } = &span.status {
        let _ = write!(out, "  ERROR: {description}");
    }
    out.push('\n');
    let id = span.span_context.span_id();
    for child in spans.iter().filter(|s| s.parent_span_id == id) {
        write_span(out, spans, child, depth + 1);
    }
}
