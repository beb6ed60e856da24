//! Forwards the plugin's `tracing` events to the host.
//!
//! The plugin has its own copy of `tracing` with its own global dispatcher; at init the SDK
//! installs a subscriber whose only job is to format each event and hand it to the host's log
//! service, which re-emits it in the host's `tracing` with the plugin's id attached.

use std::fmt::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::abi::{HostServicesV1, LogLevel};

static HOST: OnceLock<HostServicesV1> = OnceLock::new();

/// Stores the host services and installs the forwarding subscriber. Idempotent.
pub(crate) fn install(host: HostServicesV1) {
    if HOST.set(host).is_ok() {
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(HostLayer));
    }
}

/// Sends one record to the host, if the host has called init.
pub(crate) fn log(level: LogLevel, target: &str, message: &str) {
    if let Some(host) = HOST.get() {
        (host.log)(host.handle, level, target.into(), message.into());
    }
}

struct HostLayer;

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => LogLevel::ERROR,
            Level::WARN => LogLevel::WARN,
            Level::INFO => LogLevel::INFO,
            Level::DEBUG => LogLevel::DEBUG,
            Level::TRACE => LogLevel::TRACE,
        };
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        log(level, meta.target(), &visitor.text);
    }
}

#[derive(Default)]
struct MessageVisitor {
    text: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            // The message goes first, whatever order the fields were recorded in.
            self.text.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.insert_str(0, value);
        } else {
            let _ = write!(self.text, " {}={value}", field.name());
        }
    }
}
