//! The daemon's metrics, served at `/metrics` in the OpenMetrics text format (which Prometheus
//! scrapes).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label: a task's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `error`, `timeout`, `cancelled`, `rejected`.
    pub outcome: String,
}

/// Label: a plugin id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// Plugin id.
    pub plugin: String,
}

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    /// Tasks by outcome.
    pub tasks: Family<Outcome, Counter>,
    /// Task latency, seconds.
    pub task_seconds: Histogram,
    /// Driver call latency, seconds (StartPrompt to FinishPrompt).
    pub upstream_seconds: Histogram,
    /// Tasks running now.
    pub in_flight: Gauge,
    /// Events published on request buses.
    pub events: Counter,
    /// Failed plugin calls, by plugin.
    pub plugin_errors: Family<PluginLabel, Counter>,
    /// Driver streams cut mid-way and sent again (`PromptRetryEvent`s).
    pub prompt_retries: Counter,
    /// Sync-path threads still inside a plugin call after their task ended (timed out,
    /// cancelled): each holds one of `server.blocking_threads` until the call returns.
    pub sync_threads_stuck: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 120.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("grip");
        let tasks = Family::<Outcome, Counter>::default();
        let task_seconds = Histogram::new(latency_buckets());
        let upstream_seconds = Histogram::new(latency_buckets());
        let in_flight = Gauge::default();
        let events = Counter::default();
        let plugin_errors = Family::<PluginLabel, Counter>::default();
        let prompt_retries = Counter::default();
        let sync_threads_stuck = Gauge::default();
        registry.register("tasks", "Tasks by outcome", tasks.clone());
        registry.register(
            "task_duration_seconds",
            "Task latency",
            task_seconds.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Prompt driver call latency",
            upstream_seconds.clone(),
        );
        registry.register("tasks_in_flight", "Tasks running now", in_flight.clone());
        registry.register(
            "events_published",
            "Events published on request buses",
            events.clone(),
        );
        registry.register(
            "plugin_errors",
            "Failed plugin calls by plugin",
            plugin_errors.clone(),
        );
        registry.register(
            "prompt_retries",
            "Driver streams cut mid-way and sent again",
            prompt_retries.clone(),
        );
        registry.register(
            "sync_threads_stuck",
            "Sync-path threads still inside a plugin call after their task ended",
            sync_threads_stuck.clone(),
        );
        Self {
            registry,
            tasks,
            task_seconds,
            upstream_seconds,
            in_flight,
            events,
            plugin_errors,
            prompt_retries,
            sync_threads_stuck,
        }
    }
}

impl Metrics {
    /// Counts a task outcome.
    pub fn outcome(&self, outcome: &str) {
        self.tasks
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a failed call of `plugin`.
    pub fn plugin_error(&self, plugin: &str) {
        self.plugin_errors
            .get_or_create(&PluginLabel {
                plugin: plugin.to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}
