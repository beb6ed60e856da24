//! W3C trace context: a caller's `traceparent` continues its trace in the task's spans, and
//! the prompt span's own goes out on the upstream request (through the driver, see
//! `PromptRequest::traceparent`).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether `s` is a W3C `traceparent` this host understands: `00-<32 hex>-<16 hex>-<2 hex>`
/// with non-zero ids. Anything else from a caller is ignored (a fresh trace starts).
pub fn is_valid_traceparent(s: &str) -> bool {
    s.len() == 55 && context_of(s).is_some()
}

/// The remote parent a caller's `traceparent` names.
pub(crate) fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent` that makes `span` the parent of a downstream call; `None` when `span` is
/// not exported (telemetry off).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(good));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra-stuff",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad:?}");
        }
    }
}
