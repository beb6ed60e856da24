//! Typed tools: each activity is a Rust type whose fields are its input.
//!
//! The input type derives `Deserialize` and `JsonSchema`; its JSON Schema (and, from its doc
//! comment, its description) is what the model is offered, and the SDK deserialises the model's
//! arguments into it before the activity runs. A tool lists its activities once, by type, in
//! [`TypedTool::activities`]: there is no name to match and no schema to write by hand.
//!
//! How an activity is registered says how it runs on each path:
//!
//! | registered with | implements | sync path (`run()`) | async path (`async_run()`) |
//! |---|---|---|---|
//! | [`Activities::add`] | [`Activity`] | `run` | `run`, inline (keep it quick) |
//! | [`Activities::add_blocking`] | [`Activity`] | `run` | `run` on a blocking thread |
//! | [`Activities::add_async`] | [`AsyncActivity`] | `run` driven to completion | `run` |
//!
//! so every typed tool works on both paths, and registering an activity for a mode it does not
//! implement does not compile.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{PluginError, runtime};
use crate::wire::{self, ToolOutput, ToolSpec};

/// A tool made of typed activities. Export it with `tool:` in
/// [`export_plugin!`](crate::export_plugin).
///
/// ```
/// use plugin_api::prelude::*;
///
/// struct Shout;
///
/// /// Returns the text in capitals.
/// #[derive(Deserialize, JsonSchema)]
/// struct Loud {
///     /// The text to shout.
///     text: String,
/// }
///
/// impl Activity<Shout> for Loud {
///     const NAME: &'static str = "loud";
///     type Output = String;
///
///     fn run(self, _: &Shout) -> Result<String, PluginError> {
///         Ok(self.text.to_uppercase())
///     }
/// }
///
/// impl TypedTool for Shout {
///     type Config = NoConfig;
///     const NAME: &'static str = "Shout";
///     const DESCRIPTION: &'static str = "Upper-cases text";
///
///     fn new(_: NoConfig) -> Result<Self, PluginError> {
///         Ok(Shout)
///     }
///
///     fn activities(set: &mut Activities<Self>) {
///         set.add::<Loud>();
///     }
/// }
/// # fn main() {}
/// ```
pub trait TypedTool: Sized + Send + Sync + 'static {
    /// Typed configuration, from the manifest's `[config]`; use [`NoConfig`](super::NoConfig)
    /// for none.
    type Config: DeserializeOwned;
    /// The tool's name (`Calculator`); the model sees `<NAME>_<activity>`.
    const NAME: &'static str;
    /// What the tool is for, for the model.
    const DESCRIPTION: &'static str;

    /// Makes the tool from its configuration.
    ///
    /// # Errors
    /// An [`ErrorKind::Config`](super::ErrorKind::Config) error when the configuration cannot
    /// be used.
    fn new(config: Self::Config) -> Result<Self, PluginError>;

    /// Registers the tool's activities, by type.
    fn activities(set: &mut Activities<Self>);
}

/// An activity that runs on the calling thread. Its fields are its input.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is registered as a sync activity of `{T}` but does not implement `Activity<{T}>`",
    note = "implement `Activity<{T}>` (a sync `run`), or register an `AsyncActivity` with `add_async`"
)]
pub trait Activity<T>: DeserializeOwned + JsonSchema + Send + 'static {
    /// The activity's name (`calculate`).
    const NAME: &'static str;
    /// What it does, for the model; when empty, the type's doc comment.
    const DESCRIPTION: &'static str = "";
    /// What it returns: text (`String`), structured data ([`Json`]) or a [`ToolOutput`].
    type Output: IntoToolOutput;

    /// Runs the activity. A failure the model should see and act on (nothing found, a value out
    /// of range) is best an `Ok(ToolOutput::error(..))` output.
    ///
    /// # Errors
    /// A failure of the tool itself; the host reports it to the model as a failed call.
    fn run(self, tool: &T) -> Result<Self::Output, PluginError>;
}

/// An activity that runs as a future, in the plugin's runtime (timers, sockets and reqwest
/// work). Its fields are its input.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is registered as an async activity of `{T}` but does not implement `AsyncActivity<{T}>`",
    note = "implement `AsyncActivity<{T}>` (an async `run`), or register an `Activity` with `add` or `add_blocking`"
)]
pub trait AsyncActivity<T>: DeserializeOwned + JsonSchema + Send + 'static {
    /// The activity's name.
    const NAME: &'static str;
    /// What it does, for the model; when empty, the type's doc comment.
    const DESCRIPTION: &'static str = "";
    /// What it returns: text (`String`), structured data ([`Json`]) or a [`ToolOutput`].
    type Output: IntoToolOutput + Send;

    /// Runs the activity.
    fn run(self, tool: &T) -> impl Future<Output = Result<Self::Output, PluginError>> + Send;
}

/// What an activity may return.
pub trait IntoToolOutput {
    /// Converts to the wire output.
    ///
    /// # Errors
    /// When a structured value cannot be encoded.
    fn into_tool_output(self) -> Result<ToolOutput, PluginError>;
}

impl IntoToolOutput for ToolOutput {
    fn into_tool_output(self) -> Result<ToolOutput, PluginError> {
        Ok(self)
    }
}

impl IntoToolOutput for String {
    fn into_tool_output(self) -> Result<ToolOutput, PluginError> {
        Ok(ToolOutput::ok(self))
    }
}

impl IntoToolOutput for &'static str {
    fn into_tool_output(self) -> Result<ToolOutput, PluginError> {
        Ok(ToolOutput::ok(self))
    }
}

/// A structured result: the model reads it as JSON text, and hosts, listeners and clients get
/// the value itself ([`ToolOutput::structured`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoToolOutput for Json<T> {
    fn into_tool_output(self) -> Result<ToolOutput, PluginError> {
        let value = serde_json::to_value(&self.0)
            .map_err(|e| PluginError::internal(format!("cannot encode the result: {e}")))?;
        Ok(ToolOutput::json(value))
    }
}

type SyncFn<T> = fn(&Arc<T>, Value) -> Result<ToolOutput, PluginError>;
type AsyncFn<T> = fn(Arc<T>, Value) -> BoxFuture<'static, Result<ToolOutput, PluginError>>;

struct Entry<T> {
    name: &'static str,
    description: String,
    schema: Result<Value, String>,
    sync: SyncFn<T>,
    asynchronous: AsyncFn<T>,
}

/// The activities of tool `T`, registered by type in [`TypedTool::activities`].
pub struct Activities<T> {
    entries: Vec<Entry<T>>,
}

impl<T> std::fmt::Debug for Activities<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name).collect();
        f.debug_struct("Activities").field("names", &names).finish()
    }
}

fn decode<A: DeserializeOwned>(name: &str, input: Value) -> Result<A, PluginError> {
    serde_json::from_value(input)
        .map_err(|e| PluginError::invalid_input(format!("input of `{name}`: {e}")))
}

fn run_sync<T, A: Activity<T>>(tool: &Arc<T>, input: Value) -> Result<ToolOutput, PluginError> {
    decode::<A>(A::NAME, input)?.run(tool)?.into_tool_output()
}

fn run_inline<T: Send + Sync + 'static, A: Activity<T>>(
    tool: Arc<T>,
    input: Value,
) -> BoxFuture<'static, Result<ToolOutput, PluginError>> {
    Box::pin(async move { run_sync::<T, A>(&tool, input) })
}

fn run_on_blocking_thread<T: Send + Sync + 'static, A: Activity<T>>(
    tool: Arc<T>,
    input: Value,
) -> BoxFuture<'static, Result<ToolOutput, PluginError>> {
    Box::pin(async move { runtime::spawn_blocking(move || run_sync::<T, A>(&tool, input)).await? })
}

fn run_async<T: Send + Sync + 'static, A: AsyncActivity<T>>(
    tool: Arc<T>,
    input: Value,
) -> BoxFuture<'static, Result<ToolOutput, PluginError>> {
    Box::pin(async move {
        let args = decode::<A>(A::NAME, input)?;
        args.run(&tool).await?.into_tool_output()
    })
}

fn block_on_async<T: Send + Sync + 'static, A: AsyncActivity<T>>(
    tool: &Arc<T>,
    input: Value,
) -> Result<ToolOutput, PluginError> {
    runtime::block_on(run_async::<T, A>(Arc::clone(tool), input))
}

impl<T: Send + Sync + 'static> Activities<T> {
    fn push<A: JsonSchema>(
        &mut self,
        name: &'static str,
        description: &str,
        sync: SyncFn<T>,
        asynchronous: AsyncFn<T>,
    ) -> &mut Self {
        let (schema, doc) = match input_schema::<A>() {
            Ok((schema, doc)) => (Ok(schema), doc),
            Err(e) => (Err(e), String::new()),
        };
        self.entries.push(Entry {
            name,
            description: if description.is_empty() {
                doc
            } else {
                description.to_owned()
            },
            schema,
            sync,
            asynchronous,
        });
        self
    }

    /// Registers a quick activity: on the async path it runs inline, so it must not block
    /// (parse, compute, format). Blocking work belongs in [`Activities::add_blocking`].
    pub fn add<A: Activity<T>>(&mut self) -> &mut Self {
        self.push::<A>(
            A::NAME,
            A::DESCRIPTION,
            run_sync::<T, A>,
            run_inline::<T, A>,
        )
    }

    /// Registers an activity that blocks (files, processes, a blocking client): on the async
    /// path it runs on the plugin's blocking pool.
    pub fn add_blocking<A: Activity<T>>(&mut self) -> &mut Self {
        self.push::<A>(
            A::NAME,
            A::DESCRIPTION,
            run_sync::<T, A>,
            run_on_blocking_thread::<T, A>,
        )
    }

    /// Registers an async activity: on the sync path it is driven to completion on the
    /// calling thread.
    pub fn add_async<A: AsyncActivity<T>>(&mut self) -> &mut Self {
        self.push::<A>(
            A::NAME,
            A::DESCRIPTION,
            block_on_async::<T, A>,
            run_async::<T, A>,
        )
    }

    /// The names of the registered activities, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }
}

/// The JSON Schema of an activity's input, and its doc comment. Subschemas are inlined
/// (models follow `$ref` poorly); the root must be an object.
fn input_schema<A: JsonSchema>() -> Result<(Value, String), String> {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<A>()
        .to_value();
    let Some(object) = schema.as_object_mut() else {
        return Err("its input schema is not an object".to_owned());
    };
    if object.get("type").and_then(Value::as_str) != Some("object") {
        return Err(format!(
            "its input must be a struct with named fields (a JSON object), not {}",
            object
                .get("type")
                .map_or("an untyped value".into(), Value::to_string)
        ));
    }
    object.remove("title");
    object
        .entry("properties")
        .or_insert_with(|| Value::Object(Default::default()));
    let doc = match object.remove("description") {
        Some(Value::String(d)) => d,
        _ => String::new(),
    };
    Ok((schema, doc))
}

/// A tool's activities, checked and ready to dispatch: what the FFI adapter holds.
pub(crate) struct Table<T> {
    spec: ToolSpec,
    entries: Vec<Entry<T>>,
}

impl<T: TypedTool> Table<T> {
    /// Builds and checks `T`'s activities.
    pub(crate) fn build() -> Result<Self, PluginError> {
        let mut set = Activities {
            entries: Vec::new(),
        };
        T::activities(&mut set);
        if set.entries.is_empty() {
            return Err(PluginError::internal(format!(
                "tool `{}` registers no activities in `Tool::activities`",
                T::NAME
            )));
        }
        let mut spec = ToolSpec::new(T::NAME, T::DESCRIPTION);
        for (i, e) in set.entries.iter().enumerate() {
            if set.entries[..i].iter().any(|p| p.name == e.name) {
                return Err(PluginError::internal(format!(
                    "tool `{}`: activity `{}` is registered twice",
                    T::NAME,
                    e.name
                )));
            }
            let schema = e.schema.clone().map_err(|why| {
                PluginError::internal(format!("tool `{}`, activity `{}`: {why}", T::NAME, e.name))
            })?;
            spec = spec.activity(e.name, e.description.clone(), schema);
        }
        Ok(Self {
            spec,
            entries: set.entries,
        })
    }

    pub(crate) fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn entry(&self, invocation: &wire::ToolInvocation) -> Result<&Entry<T>, PluginError> {
        self.entries
            .iter()
            .find(|e| e.name == invocation.activity)
            .ok_or_else(|| {
                PluginError::new(
                    super::ErrorKind::NotFound,
                    format!(
                        "tool `{}` has no activity `{}` (it has: {})",
                        T::NAME,
                        invocation.activity,
                        self.entries
                            .iter()
                            .map(|e| e.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    pub(crate) fn call(
        &self,
        tool: &Arc<T>,
        invocation: wire::ToolInvocation,
    ) -> Result<ToolOutput, PluginError> {
        let entry = self.entry(&invocation)?;
        (entry.sync)(tool, invocation.input)
    }

    pub(crate) fn call_async(
        &self,
        tool: Arc<T>,
        invocation: wire::ToolInvocation,
    ) -> BoxFuture<'static, Result<ToolOutput, PluginError>> {
        match self.entry(&invocation) {
            Ok(entry) => (entry.asynchronous)(tool, invocation.input),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}
