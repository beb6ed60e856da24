//! `grip`: the command-line front of the host library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::sync::Arc;

mod remote_run;

/// mimalloc for the host's own allocations: a task allocates a few hundred small values (JSON,
/// strings, events), and glibc's malloc and free were 12% of the daemon's instructions per task
/// (callgrind, BENCHMARKS.md "Host cost"). Plugins keep their own allocator: every value that
/// crosses the boundary is freed by the side that made it (abi_stable's types carry their
/// deallocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use host::daemon::{self, DaemonConfig};
use host::models::HostConfig;
use host::spec::{self, BuiltTask, PathChoice, Permissive, TaskSpec};
use host::{EventBus, EventListener, Kind, LoaderOptions, Mode, Registry};

/// A plugin host for LLM prompt drivers, tools and event listeners.
#[derive(Parser)]
#[command(name = "grip", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and check plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Run a prompt task: the driver, tools and listeners are plugins; text streams as it comes.
    Run(Box<RunArgs>),
    /// Serve prompt tasks over HTTP (see host::daemon for the API and the config file).
    Serve {
        /// The daemon's TOML config file (defaults apply without one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen here instead of the config's `server.bind`.
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        /// Be a front of a NATS JetStream queue (`nats://host:4222`): `POST /v1/tasks` queues
        /// tasks for `grip worker`s instead of running them here (sets `queue.url`).
        #[arg(long, env = "GRIP_NATS")]
        nats: Option<String>,
    },
    /// Run tasks from a NATS JetStream queue, as many at once as `queue.concurrency`: the
    /// plugins, limits and listeners are the config's, as for `grip serve`.
    Worker {
        /// The NATS server(s) (sets `queue.url`).
        #[arg(long, env = "GRIP_NATS")]
        nats: Option<String>,
        /// The TOML config file (the daemon's: `[plugins]`, `[queue]`, `[[listeners]]`, ...).
        #[arg(long)]
        config: Option<PathBuf>,
        /// This worker's name in task records (default: host name and process id).
        #[arg(long)]
        name: Option<String>,
        /// Serve `GET /healthz` and `GET /metrics` (the worker's task counters) on this address
        /// (loopback unless `server.auth_token_env` is set, as for `grip serve`).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// The Model Context Protocol: offer tool plugins to MCP clients.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
    },
    /// Serve one process-isolated plugin to its host over stdin/stdout (started by the host).
    #[command(hide = true)]
    PluginHost {
        /// The plugin's manifest.
        manifest: PathBuf,
        /// The library the host resolved and hashed.
        #[arg(long)]
        library: PathBuf,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// A directory of plugin manifests, searched before the default ones (repeatable). The
    /// defaults: the directories registered with `grip plugins add`, then grip's own.
    #[arg(long = "manifests")]
    manifest_dirs: Vec<PathBuf>,
    /// Search only the `--manifests` directories.
    #[arg(long, env = "GRIP_NO_DEFAULT_MANIFESTS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true", default_value = "false")]
    no_default_manifests: bool,
    /// Directory searched for libraries named by `library.name` (repeatable; before
    /// $GRIP_LIB_PATH and the host executable's directory).
    #[arg(long = "lib-dir")]
    lib_dirs: Vec<PathBuf>,
    /// Refuse plugins whose manifest pins no sha256.
    #[arg(long)]
    require_hash: bool,
    /// Run every plugin this way, whatever its manifest says (`process`: each in a supervised
    /// child process of its own).
    #[arg(long, value_enum)]
    isolation: Option<host::isolation::Isolation>,
}

impl LoadArgs {
    /// The manifest directories, in search order.
    fn dirs(&self) -> anyhow::Result<Vec<PathBuf>> {
        host::discovery::manifest_dirs(&self.manifest_dirs, !self.no_default_manifests)
            .map_err(anyhow::Error::msg)
    }

    /// Every manifest of [`LoadArgs::dirs`], loaded.
    fn registry(&self) -> anyhow::Result<(Registry, Vec<PathBuf>)> {
        let dirs = self.dirs()?;
        Ok((Registry::load_dirs(&dirs, &self.options()), dirs))
    }

    fn options(&self) -> LoaderOptions {
        let mut lib_dirs = self.lib_dirs.clone();
        lib_dirs.extend(LoaderOptions::default_lib_dirs());
        LoaderOptions {
            lib_dirs,
            require_hash: self.require_hash,
            isolation: host::isolation::IsolationPolicy {
                force: self.isolation,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum McpCommand {
    /// Serve tool plugins' activities as MCP tools (`<Tool>_<activity>`): on stdin/stdout,
    /// or streamable HTTP at `http://ADDR/mcp` with --http.
    Serve {
        /// A tool plugin id to offer (repeatable).
        #[arg(long = "tool", required = true)]
        tools: Vec<String>,
        /// Serve streamable HTTP on this address instead of stdio.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// With --http: the environment variable holding a bearer token every request must
        /// carry (required to listen on a non-loopback address).
        #[arg(long, requires = "http")]
        auth_token_env: Option<String>,
        /// With --http: a host name accepted in `Host` besides loopback ones (repeatable).
        #[arg(long = "allowed-host", requires = "http")]
        allowed_hosts: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List every manifest found: loaded or refused, with reasons.
    List {
        #[command(flatten)]
        load: LoadArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load one manifest and its library, then call each declared capability once, every tool
    /// activity with input made from its schema (exit 1 if it is refused or an entry point is
    /// broken: a panic, malformed JSON, a declared mode it does not support, no answer in time;
    /// with --strict, warnings too).
    Check(CheckArgs),
    /// Write a new plugin crate (Cargo.toml, src/lib.rs with tests, manifest, README) to start
    /// from, outside this repository.
    New {
        /// The plugin's name: crate name and plugin id (`my-tool`).
        name: String,
        /// What the plugin provides.
        #[arg(long, value_enum, default_value_t = NewKind::Tool)]
        kind: NewKind,
        /// Where to write it (default: ./<name>); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where the crate gets plugin-api: a path to a checkout's `plugin-api` directory, or
        /// a version requirement (default: the source tree this grip was built from).
        #[arg(long)]
        plugin_api: Option<String>,
    },
    /// Register a manifest directory, so every later command finds its plugins.
    Add {
        /// The directory (kept as an absolute path).
        dir: PathBuf,
    },
    /// Unregister a manifest directory.
    Remove {
        /// The directory.
        dir: PathBuf,
    },
    /// Print the manifest directories searched, in order.
    Dirs {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Print the sha256 of a library, to pin in its manifest's `library.sha256`.
    Hash {
        /// The library file.
        library: PathBuf,
    },
}

#[derive(Args)]
struct CheckArgs {
    /// The manifest file.
    manifest: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
    /// Only load: call nothing.
    #[arg(long)]
    load_only: bool,
    /// Warnings fail too: ordinary errors (no server, no key), tool error results, activities
    /// no valid input could be made for.
    #[arg(long)]
    strict: bool,
    /// Config overrides, as a JSON object (inline, or @file).
    #[arg(long)]
    config: Option<String>,
    /// The only tool activity to call (default: every one).
    #[arg(long)]
    activity: Option<String>,
    /// The tool input, as JSON (default: a small value made from each activity's schema).
    #[arg(long)]
    input: Option<String>,
    /// Seconds allowed per call.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Copy, Clone, ValueEnum)]
enum NewKind {
    Tool,
    Driver,
    Listener,
}

#[derive(Args)]
struct RunArgs {
    /// The input of the prompt task.
    input: String,
    /// Driver plugin id (default: the local model).
    #[arg(long, default_value = "local")]
    driver: String,
    /// Tool plugin ids offered to the model (repeatable).
    #[arg(long = "tool")]
    tools: Vec<String>,
    /// Which path runs the task; `auto` picks async when the driver has it, else sync.
    #[arg(long, value_enum, default_value_t = RunPath::Auto)]
    path: RunPath,
    /// Do not stream, even if the driver can.
    #[arg(long)]
    no_stream: bool,
    /// JSON Schema the answer must satisfy (inline JSON, or @file).
    #[arg(long)]
    output_schema: Option<String>,
    /// Bound on tool rounds plus output-schema retries.
    #[arg(long, default_value_t = host::task::DEFAULT_MAX_SUBTASKS)]
    max_subtasks: usize,
    /// A rule for the system prompt (repeatable).
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Config overrides for the driver, as a JSON object. Any key may be changed here (you own
    /// this machine); the daemon lets a request change only the keys its operator allowed.
    #[arg(long)]
    config: Option<String>,
    /// Config overrides for one tool, `ID=JSON` (the JSON inline, or @file; repeatable).
    #[arg(long = "tool-config", value_name = "ID=JSON")]
    tool_configs: Vec<String>,
    /// Config overrides for one listener, `ID=JSON` (the JSON inline, or @file; repeatable).
    #[arg(long = "listener-config", value_name = "ID=JSON")]
    listener_configs: Vec<String>,
    /// Print the task output as JSON (text, json, usage, subtasks) instead of plain text.
    #[arg(long)]
    json: bool,
    /// Listener plugins that receive the run's events (repeatable), next to the `console`
    /// trace (shown unless --quiet or --json).
    #[arg(long = "listener")]
    listeners: Vec<String>,
    /// No console trace: only the answer is printed.
    #[arg(long, short)]
    quiet: bool,
    /// Print the run's OpenTelemetry span tree (task, prompt attempts, tool calls) to stderr
    /// when it ends; OTLP export (`OTEL_EXPORTER_OTLP_ENDPOINT`) works with or without it.
    #[arg(long)]
    trace: bool,
    /// Submit the task to a NATS JetStream queue (`nats://host:4222`) for a `grip worker` to
    /// run, and follow its events from there; no plugin is loaded here.
    #[arg(long, env = "GRIP_NATS")]
    nats: Option<String>,
    /// With --nats: a config file whose `[queue]` names the cluster's streams and buckets.
    #[arg(long, requires = "nats")]
    queue_config: Option<PathBuf>,
    /// The task id: submitting the same id again returns that task's result instead of
    /// running it again (with --nats).
    #[arg(long, requires = "nats")]
    id: Option<String>,
    /// Continue this conversation: its earlier turns come before the input, and this turn is
    /// kept for the next task (with --nats: the cluster keeps conversations).
    #[arg(long, requires = "nats")]
    conversation: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum RunPath {
    Auto,
    Sync,
    Async,
}

/// The log on stderr (filtered by `GRIP_LOG`) and, when configured, the OpenTelemetry layer
/// (its own filter: only the GenAI spans), returning what ends the latter.
fn init_tracing(
    format: LogFormat,
    telemetry: Option<&host::telemetry::TelemetryConfig>,
    tree: bool,
) -> anyhow::Result<host::telemetry::Telemetry> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a terminal: a log file or pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (otel, handle) = match telemetry {
        Some(t) => host::telemetry::layer(t, tree)?,
        None => (None, host::telemetry::Telemetry::default()),
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(handle)
}

/// The `[telemetry]` of the config file a daemon or worker is started with.
fn telemetry_config(command: &Command) -> anyhow::Result<host::telemetry::TelemetryConfig> {
    Ok(match command {
        Command::Serve { config, .. } | Command::Worker { config, .. } => {
            load_config(config.as_deref())?.telemetry
        }
        _ => host::telemetry::TelemetryConfig::default(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = (|| {
        // A plugin's child logs JSON lines, which its host re-emits under the plugin's id;
        // its spans are the host's to make, whatever OTEL_* variables it inherited.
        if let Command::PluginHost { .. } = cli.command {
            return init_tracing(LogFormat::Json, None, false);
        }
        let tree = matches!(&cli.command, Command::Run(a) if a.trace);
        init_tracing(cli.log_format, Some(&telemetry_config(&cli.command)?), tree)
    })();
    let telemetry = match started {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Plugins { command } => plugins(command),
        Command::Run(args) => run_task(*args),
        Command::Serve { config, bind, nats } => serve(config, bind, nats),
        Command::Worker {
            nats,
            config,
            name,
            metrics,
        } => worker(config, nats, name, metrics),
        Command::Mcp {
            command:
                McpCommand::Serve {
                    tools,
                    http,
                    auth_token_env,
                    allowed_hosts,
                    load,
                },
        } => mcp_serve(
            &tools,
            http,
            auth_token_env.as_deref(),
            allowed_hosts,
            &load,
        ),
        Command::PluginHost { manifest, library } => {
            Ok(host::isolation::serve_child(&manifest, &library))
        }
    }
}

fn plugins(command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginsCommand::List { load, json } => plugins_list(&load, json),
        PluginsCommand::Check(args) => plugins_check(args),
        PluginsCommand::New {
            name,
            kind,
            dir,
            plugin_api,
        } => plugins_new(&name, kind, dir, plugin_api),
        PluginsCommand::Add { dir } => {
            let (file, new) = host::discovery::add(&dir).map_err(anyhow::Error::msg)?;
            let what = if new {
                "registered"
            } else {
                "already registered"
            };
            println!("{what}: {} (in {})", dir.display(), file.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Remove { dir } => {
            let (file, removed) = host::discovery::remove(&dir).map_err(anyhow::Error::msg)?;
            if removed {
                println!("unregistered: {} (in {})", dir.display(), file.display());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("not registered: {} (see {})", dir.display(), file.display());
                Ok(ExitCode::FAILURE)
            }
        }
        PluginsCommand::Dirs { load } => {
            for d in load.dirs()? {
                println!("{}", d.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Hash { library } => {
            let hash = host::loader::sha256_file(&library)
                .with_context(|| format!("reading {}", library.display()))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn plugins_list(load: &LoadArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (registry, _) = load.registry()?;
    registry.connect_mcp();
    let rows = registry.rows();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<16} {:<15} {:<8} {:<8} {:<40} {:<18} PATH",
            "ID", "KIND", "VERSION", "STATUS", "CAPABILITIES", "ISOLATION"
        )?;
        for r in rows {
            let kinds: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
            let path = r.library.as_ref().unwrap_or(&r.manifest);
            writeln!(
                out,
                "{:<16} {:<15} {:<8} {:<8} {:<40} {:<18} {}",
                r.id,
                if kinds.is_empty() {
                    "-".into()
                } else {
                    kinds.join(",")
                },
                r.version.as_deref().unwrap_or("-"),
                r.status,
                if r.capabilities.is_empty() {
                    "-"
                } else {
                    &r.capabilities
                },
                match (r.isolation, r.pid) {
                    (Some(i), Some(pid)) => format!("{} pid {pid}", i.as_str()),
                    (Some(i), None) => i.as_str().to_owned(),
                    (None, _) => "-".into(),
                },
                path.display()
            )?;
            if let Some(mcp) = &r.mcp {
                writeln!(out, "    mcp: {mcp}")?;
            }
            if !r.functions.is_empty() {
                writeln!(out, "    functions: {}", r.functions.join(", "))?;
            }
            if let Some(reason) = r.reason {
                writeln!(out, "    reason: {reason}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plugins_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let CheckArgs {
        manifest,
        load,
        load_only,
        strict,
        config,
        activity,
        input,
        timeout,
    } = args;
    let mut registry = Registry::new();
    let id = match registry.add_manifest(&manifest, &load.options()) {
        Ok(id) => id,
        Err(e) => {
            println!("refused: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let p = registry
        .get(&id)
        .context("plugin vanished from the registry")?;
    println!(
        "ok: plugin `{id}` {} ({}) from {}",
        p.info().version,
        host::manifest::describe_capabilities(p.capabilities()),
        p.library().display()
    );
    if load_only {
        return Ok(ExitCode::SUCCESS);
    }
    if !(timeout.is_finite() && timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let options = host::check::CheckOptions {
        config: config.map(|c| json_arg("--config", &c)).transpose()?,
        activity,
        input: input.map(|i| json_arg("--input", &i)).transpose()?,
        timeout: std::time::Duration::from_secs_f64(timeout),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // A driver is made the one way every front makes it: with its model prepared.
    let mut host_config = HostConfig::default();
    if let Err(e) = rt.block_on(host_config.prepare(p, &host::models::cache_dir(), true)) {
        println!("  FAIL prepare model: {e}");
        return Ok(ExitCode::FAILURE);
    }
    let lines = rt.block_on(host::check::exercise(p, &host_config, &options));
    let mut failed = false;
    for line in &lines {
        let (tag, text) = match &line.outcome {
            host::check::Outcome::Ok(t) => ("ok", t),
            host::check::Outcome::Warn(t) => {
                failed |= strict;
                ("warn", t)
            }
            host::check::Outcome::Fail(t) => {
                failed = true;
                ("FAIL", t)
            }
        };
        println!(
            "  {tag:<4} {} ({} ms): {text}",
            line.what,
            line.elapsed.as_millis()
        );
    }
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn plugins_new(
    name: &str,
    kind: NewKind,
    dir: Option<PathBuf>,
    plugin_api: Option<String>,
) -> anyhow::Result<ExitCode> {
    let kind = match kind {
        NewKind::Tool => host::scaffold::TemplateKind::Tool,
        NewKind::Driver => host::scaffold::TemplateKind::Driver,
        NewKind::Listener => host::scaffold::TemplateKind::Listener,
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let source = match plugin_api {
        Some(arg) => host::scaffold::PluginApiSource::parse(&arg),
        None => host::scaffold::PluginApiSource::default_for_this_host(),
    };
    let files =
        host::scaffold::write_plugin(name, kind, &dir, &source).map_err(anyhow::Error::msg)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    if let host::scaffold::PluginApiSource::Version(v) = &source {
        println!(
            "note: plugin-api is taken from the registry as version {v:?}; pass --plugin-api <path to plugin-api> to use a checkout"
        );
    }
    println!(
        "next: cd {} && cargo test && cargo build --release && grip plugins check manifests/{name}.toml --lib-dir target/release",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn json_arg(what: &str, value: &str) -> anyhow::Result<serde_json::Value> {
    let text = match value.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("{what}: reading {path}"))?
        }
        None => value.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{what} must be JSON"))
}

/// `ID=JSON` arguments, by id.
fn id_json_args(
    flag: &str,
    args: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let mut out = std::collections::BTreeMap::new();
    for a in args {
        let (id, json) = a
            .split_once('=')
            .with_context(|| format!("{flag} {a:?}: expected ID=JSON"))?;
        let value = json_arg(&format!("{flag} {id}"), json)?;
        if out.insert(id.to_owned(), value).is_some() {
            anyhow::bail!("{flag}: `{id}` is given twice");
        }
    }
    Ok(out)
}

/// Where the CLI looked, and what to do, for a run that found no plugin of the name.
fn nothing_found(registry: &Registry, dirs: &[PathBuf]) -> String {
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let refused = registry.refused().len();
    format!(
        "\n  searched: {}{}\n  to fix: pass --manifests DIR, register a directory once with \
         `grip plugins add DIR`, and see `grip plugins list` for what loaded and why not",
        if looked.is_empty() {
            "nothing (no --manifests, and no default directory exists here)".to_owned()
        } else {
            looked.join(", ")
        },
        if refused > 0 {
            format!(" ({refused} manifest(s) refused)")
        } else {
            String::new()
        }
    )
}

fn run_task(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(url) = args.nats.clone() {
        return remote_run::run(args, url);
    }
    let (registry, dirs) = args.load.registry()?;
    let plugin = spec::find(&registry, &args.driver, Kind::PromptDriver, "driver")
        .map_err(|e| anyhow::anyhow!("{e}{}", nothing_found(&registry, &dirs)))?;
    let mut listener_configs = id_json_args("--listener-config", &args.listener_configs)?;
    let spec = TaskSpec {
        stream: !args.no_stream && plugin.can(Kind::PromptDriver, Mode::Stream),
        path: match args.path {
            RunPath::Auto => PathChoice::Auto,
            RunPath::Sync => PathChoice::Sync,
            RunPath::Async => PathChoice::Async,
        },
        ..spec_of(&args)?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // A driver that needs a model file gets it now (downloaded once, then cached).
    let mut host_config = HostConfig::default();
    rt.block_on(host_config.prepare(plugin, &host::models::cache_dir(), true))
        .with_context(|| format!("preparing the model of `{}`", plugin.id()))?;
    let BuiltTask {
        task, use_async, ..
    } = spec.build(&registry, &host_config, &Permissive)?;
    let stream = spec.stream;
    let bus = Arc::new(EventBus::new());
    let task = task.event_bus(Arc::clone(&bus));
    // Listener plugins see the run, next to the console plugin's trace of it.
    let mut listener_ids = Vec::new();
    if !args.quiet && !args.json && registry.get("console").is_some() {
        listener_ids.push("console".to_owned());
    }
    for id in args.listeners {
        if !listener_ids.contains(&id) {
            listener_ids.push(id);
        }
    }
    if let Some(id) = listener_configs
        .keys()
        .find(|id| !listener_ids.contains(id))
    {
        anyhow::bail!(
            "--listener-config {id}: `{id}` is not a listener of this run (add --listener {id})"
        );
    }
    let console_shown = listener_ids.iter().any(|id| id == "console");
    let mut guards = Vec::new();
    for id in &listener_ids {
        let overrides = listener_configs.remove(id);
        let handle = spec::find(&registry, id, Kind::EventListener, "listener")?
            .new_listener(overrides.as_ref())?;
        guards.push(bus.add_listener(EventListener::new(id.clone()).driver(handle, 1)));
    }

    // Every log line of the run (the plugins' own included) carries the task id.
    let span = tracing::info_span!("task", task_id = %task.id(), driver = %plugin.id());
    let result = if use_async {
        rt.block_on(tracing::Instrument::instrument(
            task.async_run(),
            span.clone(),
        ))
    } else {
        span.in_scope(|| task.run())
    };
    drop(guards);
    let out = match result {
        Ok(out) => out,
        // The console printed the task's finish line with the error: say it once. Errors
        // raised before the task started (a missing capability) were never published.
        Err(e) if console_shown && !refused_before_start(&e) => {
            span.in_scope(|| tracing::debug!("task failed: {e}"));
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !console_shown {
        println!("{}", out.text);
    }
    eprintln!(
        "[{} · {} path{} · {} in / {} out tokens · {} subtask(s)]",
        plugin.id(),
        if use_async { "async" } else { "sync" },
        if stream { ", streamed" } else { "" },
        out.usage.input_tokens,
        out.usage.output_tokens,
        out.subtasks
    );
    Ok(ExitCode::SUCCESS)
}

/// The task `grip run` asks for, from its arguments (the stream and path are the caller's to
/// set: they depend on where it runs).
fn spec_of(args: &RunArgs) -> anyhow::Result<TaskSpec> {
    Ok(TaskSpec {
        driver: Some(args.driver.clone()),
        config: args
            .config
            .as_deref()
            .map(|c| json_arg("--config", c))
            .transpose()?,
        input: args.input.clone(),
        tools: args.tools.clone(),
        tool_config: id_json_args("--tool-config", &args.tool_configs)?,
        output_schema: args
            .output_schema
            .as_deref()
            .map(|s| json_arg("--output-schema", s))
            .transpose()?,
        max_subtasks: Some(args.max_subtasks),
        rules: args.rules.clone(),
        id: args.id.clone(),
        conversation_id: args.conversation.clone(),
        ..TaskSpec::default()
    })
}

/// Whether `run()` / `async_run()` refused the task before publishing anything.
fn refused_before_start(e: &host::TaskError) -> bool {
    matches!(
        e,
        host::TaskError::MissingCapability { .. } | host::TaskError::Publish(_)
    )
}

/// The config file, or the defaults.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<DaemonConfig> {
    Ok(match path {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    })
}

fn serve(
    config: Option<PathBuf>,
    bind: Option<std::net::SocketAddr>,
    nats: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config.as_deref())?;
    if let Some(b) = bind {
        config.server.bind = b;
    }
    if nats.is_some() {
        config.queue.url = nats;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.bind))?;
        let addr = listener.local_addr()?;
        let queue = match &config.queue.url {
            Some(_) => Some(
                host::queue::Queue::connect(&config.queue, &config.conversations, "grip-front")
                    .await?,
            ),
            None => None,
        };
        let mut state = daemon::AppState::new(config, addr)?;
        state.prepare_models().await;
        if let Some(q) = queue {
            tracing::info!(nats = ?state.config().queue.url, "a front of the queue");
            state.use_queue(q);
        }
        let state = Arc::new(state);
        state.registry().start_mcp();
        for r in state.registry().refused() {
            tracing::warn!("{}", r.error);
        }
        let loaded: Vec<&str> = state.registry().plugins().map(|p| p.id()).collect();
        tracing::info!(%addr, plugins = ?loaded, "listening");
        eprintln!(
            "grip: listening on http://{addr} (plugins: {})",
            loaded.join(", ")
        );
        let served = daemon::serve(Arc::clone(&state), listener, daemon::shutdown_signal()).await?;
        // Explicitly: a state still held by abandoned tasks is never dropped.
        tokio::task::spawn_blocking(move || state.registry().shutdown()).await?;
        anyhow::Ok(served)
    })?;
    // A sync-path thread stopped at shutdown may still be inside a driver call: do not wait
    // for it (the task has ended; its finish event went out).
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    if served.abandoned > 0 {
        eprintln!(
            "grip: {} task(s) were still running at the end of the shutdown grace and were abandoned",
            served.abandoned
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn worker(
    config: Option<PathBuf>,
    nats: Option<String>,
    name: Option<String>,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config.as_deref())?;
    if nats.is_some() {
        config.queue.url = nats;
    }
    // The worker's slots are the daemon's task permits.
    config.server.max_concurrent_tasks = config.queue.concurrency.max(1);
    let name = name.unwrap_or_else(default_worker_name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let queue =
            host::queue::Queue::connect(&config.queue, &config.conversations, &name).await?;
        let registry = Registry::load_dirs(&config.plugins.manifest_dirs, &config.loader_options());
        for r in registry.refused() {
            tracing::warn!("{}", r.error);
        }
        let ops = match metrics {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let addr = match &ops {
            Some(l) => l.local_addr()?,
            None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let token = match &config.server.auth_token_env {
            Some(var) if ops.is_some() => std::env::var(var).ok(),
            _ => None,
        };
        let mut state = daemon::AppState::from_parts(config, registry, token, addr)?;
        state.prepare_models().await;
        state.use_queue(queue.clone());
        let loaded: Vec<&str> = state.registry().plugins().map(|p| p.id()).collect();
        eprintln!(
            "grip: worker {name} ready on {} (plugins: {}; {} at once)",
            state.config().queue.url.as_deref().unwrap_or("?"),
            loaded.join(", "),
            state.config().queue.concurrency
        );
        let state = Arc::new(state);
        state.registry().start_mcp();
        if let Some(listener) = ops {
            eprintln!("grip: worker metrics on http://{}", listener.local_addr()?);
            let st = Arc::clone(&state);
            tokio::spawn(daemon::serve_ops(st, listener, std::future::pending()));
        }
        host::queue::worker::run(Arc::clone(&state), queue, name, daemon::shutdown_signal())
            .await?;
        state.flush_listeners().await;
        tokio::task::spawn_blocking(move || state.registry().shutdown()).await?;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(ExitCode::SUCCESS)
}

fn mcp_serve(
    ids: &[String],
    http: Option<std::net::SocketAddr>,
    token_env: Option<&str>,
    allowed_hosts: Vec<String>,
    load: &LoadArgs,
) -> anyhow::Result<ExitCode> {
    let token = match token_env {
        Some(var) => {
            let t = std::env::var(var).with_context(|| {
                format!("--auth-token-env {var}: the environment variable is not set")
            })?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                anyhow::bail!("--auth-token-env {var}: the token is empty");
            }
            Some(t)
        }
        None => None,
    };
    if let Some(addr) = http
        && token.is_none()
        && !host::mcp::server::is_loopback(&addr)
    {
        anyhow::bail!(
            "--http {addr} is not a loopback address: give --auth-token-env VAR so only holders of the token can call the tools"
        );
    }
    let (registry, dirs) = load.registry()?;
    let mut tools = Vec::new();
    for id in ids {
        let plugin = spec::find(&registry, id, Kind::Tool, "tool")
            .map_err(|e| anyhow::anyhow!("{e}{}", nothing_found(&registry, &dirs)))?;
        tools.push(plugin.new_tool(None)?);
    }
    let server = host::mcp::server::ToolServer::new(&tools).map_err(anyhow::Error::msg)?;
    let names: Vec<String> = server.tools().iter().map(|t| t.name.to_string()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match http {
            None => {
                eprintln!("grip: MCP server on stdio (tools: {})", names.join(", "));
                server.serve_stdio().await
            }
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!(
                    "grip: MCP server on http://{}/mcp (tools: {})",
                    listener.local_addr()?,
                    names.join(", ")
                );
                server
                    .serve_http(listener, token, allowed_hosts, daemon::shutdown_signal())
                    .await
            }
        }
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(ExitCode::SUCCESS)
}

/// `<host name>-<pid>`: unique among the workers of a cluster.
fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}
