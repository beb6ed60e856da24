//! `grip`: the command-line front of the host library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use host::{LoaderOptions, Registry};
use plugin_api::wire::{Message, PromptRequest, StreamDelta};

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
    /// Send one prompt to a driver plugin and print the answer.
    Prompt(PromptArgs),
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Directory of plugin manifests (repeatable).
    #[arg(long = "manifests", default_value = "manifests")]
    manifest_dirs: Vec<PathBuf>,
    /// Directory searched for libraries named by `library.name` (repeatable; before
    /// $GRIP_LIB_PATH and the host executable's directory).
    #[arg(long = "lib-dir")]
    lib_dirs: Vec<PathBuf>,
    /// Refuse plugins whose manifest pins no sha256.
    #[arg(long)]
    require_hash: bool,
}

impl LoadArgs {
    fn options(&self) -> LoaderOptions {
        let mut lib_dirs = self.lib_dirs.clone();
        lib_dirs.extend(LoaderOptions::default_lib_dirs());
        LoaderOptions {
            lib_dirs,
            require_hash: self.require_hash,
        }
    }
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
    /// Load one manifest and its library; exit 1 with the reason if it is refused.
    Check {
        /// The manifest file.
        manifest: PathBuf,
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
struct PromptArgs {
    /// The prompt.
    text: String,
    /// Driver plugin id.
    #[arg(long, default_value = "scripted")]
    driver: String,
    /// How to call the driver.
    #[arg(long, value_enum, default_value_t = PromptMode::Stream)]
    mode: PromptMode,
    /// Config overrides for the driver, as a JSON object.
    #[arg(long)]
    config: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Copy, Clone, ValueEnum)]
enum PromptMode {
    Sync,
    Async,
    Stream,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Plugins { command } => plugins(command),
        Command::Prompt(args) => prompt(args),
    }
}

fn plugins(command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginsCommand::List { load, json } => {
            let registry = Registry::load_dirs(&load.manifest_dirs, &load.options());
            let rows = registry.rows();
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<16} {:<15} {:<8} {:<8} {:<40} PATH",
                    "ID", "KIND", "VERSION", "STATUS", "CAPABILITIES"
                )?;
                for r in rows {
                    let kinds: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
                    let path = r.library.as_ref().unwrap_or(&r.manifest);
                    writeln!(
                        out,
                        "{:<16} {:<15} {:<8} {:<8} {:<40} {}",
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
                        path.display()
                    )?;
                    if let Some(reason) = r.reason {
                        writeln!(out, "    reason: {reason}")?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Check { manifest, load } => {
            let mut registry = Registry::new();
            match registry.add_manifest(&manifest, &load.options()) {
                Ok(id) => {
                    let p = registry
                        .get(&id)
                        .context("plugin vanished from the registry")?;
                    println!(
                        "ok: plugin `{id}` {} ({}) from {}",
                        p.info().version,
                        host::manifest::describe_capabilities(p.capabilities()),
                        p.library().display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("refused: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PluginsCommand::Hash { library } => {
            let hash = host::loader::sha256_file(&library)
                .with_context(|| format!("reading {}", library.display()))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn prompt(args: PromptArgs) -> anyhow::Result<ExitCode> {
    let registry = Registry::load_dirs(&args.load.manifest_dirs, &args.load.options());
    let Some(plugin) = registry.get(&args.driver) else {
        let known: Vec<&str> = registry.plugins().map(|p| p.id()).collect();
        bail!(
            "no loaded driver plugin `{}` (loaded: {})",
            args.driver,
            known.join(", ")
        );
    };
    let overrides: Option<serde_json::Value> = match &args.config {
        Some(c) => Some(serde_json::from_str(c).context("--config must be a JSON object")?),
        None => None,
    };
    let driver = plugin.new_driver(overrides.as_ref())?;
    let request = PromptRequest::new(vec![Message::user(args.text)]);
    let mut out = std::io::stdout().lock();
    match args.mode {
        PromptMode::Sync => {
            let resp = driver.prompt(&request)?;
            writeln!(out, "{}", resp.message.content)?;
        }
        PromptMode::Async => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let resp = rt.block_on(driver.prompt_async(&request))?;
            writeln!(out, "{}", resp.message.content)?;
        }
        PromptMode::Stream => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut stream = driver.stream(&request)?;
                while let Some(delta) = stream.next().await {
                    if let StreamDelta::Text { text } = delta? {
                        write!(out, "{text}")?;
                        out.flush()?;
                    }
                }
                writeln!(out)?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
