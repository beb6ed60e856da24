//! A prompt driver that runs a real model in-process with llama.cpp: no API key, no network.
//!
//! ```toml
//! [config]
//! model_path = "/path/to/model.gguf"   # any GGUF chat model; the host fills it in from
//!                                      # `model_source` (see host::models) when absent
//! n_ctx = 2048                         # context window, in tokens (64 to 32768, and at most
//!                                      # what the model was trained for)
//! max_tokens = 256                     # generated tokens at most (1 to n_ctx)
//! temperature = 0.7                    # 0 = greedy
//! top_p = 0.9
//! seed = 1234
//! stop = []                            # extra stop sequences
//! threads = 0                          # 0 = one per core; more than the cores is refused
//! ```
//!
//! The sizes are checked when a driver is made, with an error naming the key: a context of
//! 65536 tokens costs gigabytes, and more threads than cores trips an assertion inside
//! llama.cpp that ends the process.
//!
//! Sync, async (generation always on a blocking thread, never on an async worker) and stream
//! (one text delta per sampled token). The model's own chat template formats the prompt stack.
//!
//! Generations run one at a time, each using every core: two concurrent generations on two
//! cores would oversubscribe them and run far slower than one after the other, so later ones
//! wait their turn. A generation stops between two tokens when its caller goes away (a dropped
//! stream or future).
//!
//! Small local models do not call tools: a request that offers tools is refused with an error
//! that says so, rather than silently ignoring them.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use plugin_api::prelude::*;
use serde::Deserialize;

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    model_path: Option<PathBuf>,
    #[serde(default = "d_ctx")]
    n_ctx: u32,
    #[serde(default = "d_max_tokens")]
    max_tokens: u32,
    #[serde(default = "d_temperature")]
    temperature: f32,
    #[serde(default = "d_top_p")]
    top_p: f32,
    #[serde(default = "d_seed")]
    seed: u32,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    threads: u32,
}

fn d_ctx() -> u32 {
    2048
}
fn d_max_tokens() -> u32 {
    256
}
fn d_temperature() -> f32 {
    0.7
}
fn d_top_p() -> f32 {
    0.9
}
fn d_seed() -> u32 {
    1234
}

/// The largest context window accepted, whatever the model was trained for (memory grows with it).
const MAX_N_CTX: u32 = 32_768;

fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
}

impl Config {
    /// The resource sizes, checked before anything is allocated.
    fn check_sizes(&self) -> Result<(), PluginError> {
        let cores = cores();
        if self.threads > cores {
            return Err(PluginError::config(format!(
                "`threads` = {} is more than this machine's {cores} cores (0 uses them all)",
                self.threads
            )));
        }
        if !(64..=MAX_N_CTX).contains(&self.n_ctx) {
            return Err(PluginError::config(format!(
                "`n_ctx` = {} is out of range: 64 to {MAX_N_CTX} tokens",
                self.n_ctx
            )));
        }
        if self.max_tokens == 0 || self.max_tokens > self.n_ctx {
            return Err(PluginError::config(format!(
                "`max_tokens` = {} is out of range: 1 to n_ctx ({})",
                self.max_tokens, self.n_ctx
            )));
        }
        Ok(())
    }
}

/// Refuses anything but a GGUF file before llama.cpp's parser sees it.
fn check_gguf(path: &std::path::Path) -> Result<(), PluginError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok();
    if ok && &magic == b"GGUF" {
        Ok(())
    } else {
        Err(PluginError::config(format!(
            "model file {} is not a readable GGUF file",
            path.display()
        )))
    }
}

fn backend() -> Result<&'static LlamaBackend, PluginError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|e| PluginError::internal(format!("llama.cpp backend: {e}")))
}

/// Models are loaded once per path and shared by every driver instance.
fn model(path: &PathBuf) -> Result<Arc<LlamaModel>, PluginError> {
    static MODELS: OnceLock<Mutex<HashMap<PathBuf, Arc<LlamaModel>>>> = OnceLock::new();
    let mut models = MODELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(m) = models.get(path) {
        return Ok(Arc::clone(m));
    }
    // One message for a missing file and a wrong one: the error must not tell which files exist.
    check_gguf(path)?;
    let m = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default()).map_err(
        |e| PluginError::config(format!("cannot load the model {}: {e}", path.display())),
    )?;
    let m = Arc::new(m);
    models.insert(path.clone(), Arc::clone(&m));
    Ok(m)
}

/// One generation at a time (see the module docs).
static GENERATION: Mutex<()> = Mutex::new(());

/// The driver.
pub struct LlamaDriver {
    config: Arc<Config>,
    model: Arc<LlamaModel>,
}

struct Generated {
    text: String,
    usage: Usage,
    finish: &'static str,
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User | Role::Tool => "user",
        Role::Assistant => "assistant",
    }
}

/// Runs one generation, calling `on_piece` with each new piece of text; it returns `false` to
/// stop (the caller went away). Blocking: call it on a blocking thread.
fn generate(
    model: &LlamaModel,
    config: &Config,
    request: &PromptRequest,
    cancelled: &AtomicBool,
    mut on_piece: impl FnMut(&str) -> bool,
) -> Result<Generated, PluginError> {
    if !request.tools.is_empty() {
        return Err(PluginError::invalid_input(
            "this local model does not call tools; run the task without tools, or use a driver whose model does",
        ));
    }
    let backend = backend()?;
    let chat: Vec<LlamaChatMessage> = request
        .messages
        .iter()
        .map(|m| LlamaChatMessage::new(role(m.role).into(), m.content.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            PluginError::invalid_input(format!("a message cannot be given to the model: {e}"))
        })?;
    let template = model
        .chat_template(None)
        .map_err(|e| PluginError::config(format!("the model has no usable chat template: {e}")))?;
    let prompt = model
        .apply_chat_template(&template, &chat, true)
        .map_err(|e| PluginError::invalid_input(format!("cannot apply the chat template: {e}")))?;
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    let n_ctx = config.n_ctx;
    // In u64: a u32 sum of prompt and max_tokens could wrap and pass.
    if tokens.len() as u64 + u64::from(config.max_tokens) > u64::from(n_ctx) {
        return Err(PluginError::invalid_input(format!(
            "the prompt is {} tokens; with max_tokens {} it does not fit the {n_ctx}-token context",
            tokens.len(),
            config.max_tokens
        )));
    }

    let _turn = GENERATION.lock().unwrap_or_else(|e| e.into_inner());
    if cancelled.load(Ordering::Relaxed) {
        return Err(PluginError::new(
            ErrorKind::Cancelled,
            "cancelled before it started",
        ));
    }
    let threads = if config.threads > 0 {
        config.threads
    } else {
        cores()
    } as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(backend, params)
        .map_err(|e| PluginError::internal(format!("cannot create a llama.cpp context: {e}")))?;
    let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
    let last = tokens.len() as i32 - 1;
    for (i, t) in tokens.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i as i32 == last)
            .map_err(|e| PluginError::internal(format!("batch: {e}")))?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| PluginError::internal(format!("decoding the prompt failed: {e}")))?;

    let mut sampler = if config.temperature <= 0.0 {
        LlamaSampler::greedy()
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::top_p(config.top_p, 1),
            LlamaSampler::temp(config.temperature),
            LlamaSampler::dist(config.seed),
        ])
    };
    let mut text = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut pos = tokens.len() as i32;
    let mut generated = 0u64;
    let mut finish = "length";
    let mut emitted = 0usize;
    while generated < u64::from(config.max_tokens) {
        if cancelled.load(Ordering::Relaxed) {
            return Err(PluginError::new(
                ErrorKind::Cancelled,
                "generation cancelled",
            ));
        }
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        sampler.accept(token);
        generated += 1;
        if vocab.is_eog(token) {
            finish = "stop";
            break;
        }
        pending.extend(vocab.token_to_piece(token, false, None));
        // Emit only complete UTF-8; a character may span tokens.
        let valid = match std::str::from_utf8(&pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let piece: String = String::from_utf8_lossy(&pending[..valid]).into_owned();
            pending.drain(..valid);
            text.push_str(&piece);
            if let Some(cut) = config
                .stop
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(cut);
                finish = "stop";
                if text.len() > emitted && !on_piece(&text[emitted..]) {
                    return Err(PluginError::new(
                        ErrorKind::Cancelled,
                        "generation cancelled",
                    ));
                }
                emitted = text.len();
                break;
            }
            // Hold back what could be the start of a stop sequence.
            let hold = config
                .stop
                .iter()
                .map(|s| {
                    (1..s.len())
                        .rev()
                        .find(|k| text.ends_with(&s[..*k]))
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0);
            let upto = text.len() - hold;
            if upto > emitted && text.is_char_boundary(upto) {
                if !on_piece(&text[emitted..upto]) {
                    return Err(PluginError::new(
                        ErrorKind::Cancelled,
                        "generation cancelled",
                    ));
                }
                emitted = upto;
            }
        }
        batch.clear();
        batch
            .add(token, pos, &[0], true)
            .map_err(|e| PluginError::internal(format!("batch: {e}")))?;
        pos += 1;
        ctx.decode(&mut batch)
            .map_err(|e| PluginError::internal(format!("decoding failed: {e}")))?;
    }
    if text.len() > emitted && !on_piece(&text[emitted..]) {
        return Err(PluginError::new(
            ErrorKind::Cancelled,
            "generation cancelled",
        ));
    }
    Ok(Generated {
        text,
        usage: Usage {
            input_tokens: tokens.len() as u64,
            output_tokens: generated,
        },
        finish,
    })
}

/// Sets the flag when dropped: the future or stream waiting for a generation went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn response(g: Generated) -> PromptResponse {
    PromptResponse {
        schema_version: plugin_api::wire::WIRE_VERSION,
        message: Message::assistant(g.text),
        usage: g.usage,
        finish_reason: Some(g.finish.into()),
        id: None,
        model: None,
    }
}

impl PromptDriver for LlamaDriver {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        config.check_sizes()?;
        let path = config.model_path.clone().ok_or_else(|| {
            PluginError::config(
                "`model_path` is not set: give a GGUF file, or a `model_source` for the host to fetch",
            )
        })?;
        let model = model(&path)?;
        let trained = model.n_ctx_train();
        if config.n_ctx > trained {
            return Err(PluginError::config(format!(
                "`n_ctx` = {} is more than the {trained} tokens this model was trained for",
                config.n_ctx
            )));
        }
        Ok(Self {
            config: Arc::new(config),
            model,
        })
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        let never = AtomicBool::new(false);
        generate(&self.model, &self.config, &request, &never, |_| true).map(response)
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        let (model, config) = (Arc::clone(&self.model), Arc::clone(&self.config));
        let flag = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(Arc::clone(&flag));
        spawn_blocking(move || generate(&model, &config, &request, &flag, |_| true))
            .await?
            .map(response)
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let (model, config) = (Arc::clone(&self.model), Arc::clone(&self.config));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<StreamDelta, PluginError>>(64);
        let flag = Arc::new(AtomicBool::new(false));
        let worker_flag = Arc::clone(&flag);
        // `stream` runs inside the plugin runtime (the SDK enters it): the generation goes to its
        // blocking pool and talks to the stream through a channel.
        plugin_api::tokio::task::spawn_blocking(move || {
            let piece_tx = tx.clone();
            let result = generate(&model, &config, &request, &worker_flag, |piece| {
                piece_tx
                    .blocking_send(Ok(StreamDelta::Text {
                        text: piece.to_owned(),
                    }))
                    .is_ok()
            });
            let tail = match result {
                Ok(g) => vec![
                    Ok(StreamDelta::Usage { usage: g.usage }),
                    Ok(StreamDelta::Finish {
                        reason: g.finish.into(),
                    }),
                ],
                Err(e) if e.kind == ErrorKind::Cancelled => Vec::new(),
                Err(e) => vec![Err(e)],
            };
            for item in tail {
                if tx.blocking_send(item).is_err() {
                    break;
                }
            }
        });
        let cancel = CancelOnDrop(flag);
        Ok(
            futures::stream::unfold((rx, cancel), |(mut rx, cancel)| async move {
                rx.recv().await.map(|item| (item, (rx, cancel)))
            })
            .boxed(),
        )
    }
}

plugin_api::export_plugin! {
    id: "local",
    description: "A real model in-process on llama.cpp (default: SmolLM2-135M-Instruct); no key, no network",
    driver: LlamaDriver,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> Config {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn resource_sizes_are_bounded_without_overflow() {
        assert!(config(serde_json::json!({})).check_sizes().is_ok());
        let cases = [
            (serde_json::json!({"threads": 400}), "`threads` = 400"),
            (serde_json::json!({"n_ctx": 65536}), "`n_ctx` = 65536"),
            (serde_json::json!({"n_ctx": 8}), "`n_ctx` = 8"),
            (
                serde_json::json!({"max_tokens": 4294967295u32}),
                "`max_tokens` = 4294967295",
            ),
            (serde_json::json!({"max_tokens": 0}), "`max_tokens` = 0"),
        ];
        for (json, needle) in cases {
            let e = config(json.clone()).check_sizes().unwrap_err();
            assert!(e.message.contains(needle), "{json} -> {}", e.message);
        }
    }

    #[test]
    fn only_gguf_files_reach_llama_cpp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(&p, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let e = check_gguf(&p).unwrap_err();
        assert!(
            e.message.contains("is not a readable GGUF file"),
            "{}",
            e.message
        );
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00").unwrap();
        assert!(check_gguf(&p).is_ok());
    }
}
