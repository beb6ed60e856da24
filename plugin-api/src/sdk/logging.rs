//! Forwards the plugin's `tracing` events to the host.
//!
//! The plugin has its own copy of `tracing` with its own global dispatcher; at init the SDK
//! installs a subscriber whose only job is to format each event and hand it to the host's log
//! service, which re-emits it in the host's `tracing` with the plugin's id attached.
//!
//! A generation-2 host says the most verbose level it records; records below it are never
//! formatted (`tracing` skips their call sites altogether), which matters because the plugin's
//! own copies of hyper and reqwest emit debug and trace records on every request.

use std::fmt::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use abi_stable::std_types::RStr;

use crate::abi::LogLevel;

type LogFn = extern "C" fn(u64, LogLevel, RStr<'_>, RStr<'_>);

static HOST: OnceLock<(u64, LogFn)> = OnceLock::new();

/// Stores the host's log service and installs the forwarding subscriber, which passes records
/// up to `max` (`LogLevel(0)`: none). Idempotent.
pub(crate) fn install(handle: u64, log: LogFn, max: LogLevel) {
    if HOST.set((handle, log)).is_ok() {
        let filter = match max {
            LogLevel::ERROR => LevelFilter::ERROR,
            LogLevel::WARN => LevelFilter::WARN,
            LogLevel::INFO => LevelFilter::INFO,
            LogLevel::DEBUG => LevelFilter::DEBUG,
            LogLevel::TRACE => LevelFilter::TRACE,
            _ => LevelFilter::OFF,
        };
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(HostLayer.with_filter(filter)),
        );
    }
}

/// Sends one record to the host, if the host has called init.
pub(crate) fn log(level: LogLevel, target: &str, message: &str) {
    if let Some((handle, log)) = HOST.get() {
        log(*handle, level, target.into(), message.into());
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
