//! The one crate a grip plugin depends on.
//!
//! Three layers, from the bottom up:
//!
//! - [`abi`]: the frozen, generation-1 binary interface (abi_stable types). The host checks its
//!   layout against the plugin's before calling anything. Authors never touch it.
//! - [`wire`]: the JSON payloads that cross the boundary (prompt stacks, responses, stream
//!   deltas, tool specs and calls, events). Versioned, unknown fields ignored.
//! - [`sdk`]: the safe traits an author implements ([`PromptDriver`], [`Tool`],
//!   [`EventListenerDriver`]) and [`export_plugin!`], which generates the root module and the
//!   guarded FFI adapters.
//!
//! abi_stable is re-exported so that host and plugins always agree on its version; an author
//! depends on `plugin-api` alone.
//!
//! # A tool in a few lines
//!
//! Each activity is a type: its fields are the input the model fills in, its doc comments the
//! descriptions the model reads. The SDK derives the JSON Schema, deserialises the input and
//! dispatches by type.
//!
//! ```
//! use plugin_api::prelude::*;
//!
//! struct Shout;
//!
//! /// Returns the text in capitals.
//! #[derive(Deserialize, JsonSchema)]
//! struct Loud {
//!     /// The text to shout.
//!     text: String,
//! }
//!
//! impl Activity<Shout> for Loud {
//!     const NAME: &'static str = "loud";
//!     type Output = String;
//!
//!     fn run(self, _: &Shout) -> Result<String, PluginError> {
//!         Ok(self.text.to_uppercase())
//!     }
//! }
//!
//! impl TypedTool for Shout {
//!     type Config = NoConfig;
//!     const NAME: &'static str = "Shout";
//!     const DESCRIPTION: &'static str = "Upper-cases text";
//!
//!     fn new(_: NoConfig) -> Result<Self, PluginError> {
//!         Ok(Shout)
//!     }
//!
//!     fn activities(set: &mut Activities<Self>) {
//!         set.add::<Loud>();
//!     }
//! }
//!
//! // The id defaults to the crate's name, the description to the crate's description.
//! plugin_api::export_plugin! { tool: Shout, id: "shout" }
//! # fn main() {}
//! ```
//!
//! # Logging
//!
//! [`tracing`] is re-exported: `plugin_api::tracing::info!(...)` in a plugin reaches the host's
//! log, with the plugin's id, once the host has initialised the plugin.

pub mod abi;
pub mod abi_v2;
pub mod sdk;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "validation")]
pub mod validation;
pub mod wire;

pub use abi_stable;
pub use async_ffi;
pub use futures;
pub use schemars;
pub use serde;
pub use serde_json;
pub use tokio;
pub use tracing;

pub use sdk::{
    Activities, Activity, AsyncActivity, DeltaStream, ErrorKind, EventListenerDriver,
    IntoToolOutput, Json, NoConfig, PluginError, PromptDriver, Tool, TypedTool, block_on,
    spawn_blocking,
};

/// Everything an author usually needs, including the `Deserialize`, `Serialize` and
/// `JsonSchema` derives (the crate using them depends on `serde` and `schemars` itself, as
/// the template does).
pub mod prelude {
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
    pub use serde_json::{Value, json};

    pub use crate::sdk::{
        Activities, Activity, AsyncActivity, DeltaStream, ErrorKind, EventListenerDriver,
        IntoToolOutput, Json, NoConfig, PluginError, PromptDriver, Tool, TypedTool, block_on,
        spawn_blocking,
    };
    pub use crate::serde_json;
    pub use crate::wire::{
        Event, EventKind, FunctionSpec, Message, PromptRequest, PromptResponse, Role, StreamDelta,
        ToolCall, ToolInvocation, ToolOutput, ToolSpec, Usage,
    };
}

impl wire::ToolSpec {
    /// A spec with a name, a description and no activities yet.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            schema_version: wire::WIRE_VERSION,
            name: name.into(),
            description: description.into(),
            activities: Vec::new(),
        }
    }

    /// Adds an activity with its JSON Schema.
    pub fn activity(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        self.activities.push(wire::Activity {
            name: name.into(),
            description: description.into(),
            parameters,
        });
        self
    }
}

/// Exports a plugin: generates its root module and every FFI adapter.
///
/// Name the types implementing each kind the plugin provides (at least one), in any order:
///
/// ```
/// # use plugin_api::prelude::*;
/// # struct MyDriver;
/// # impl PromptDriver for MyDriver {
/// #     type Config = NoConfig;
/// #     const SYNC: bool = true;
/// #     fn new(_: NoConfig) -> Result<Self, PluginError> { Ok(MyDriver) }
/// # }
/// # struct MyTool;
/// # #[derive(Deserialize, JsonSchema)]
/// # struct Ping {}
/// # impl Activity<MyTool> for Ping {
/// #     const NAME: &'static str = "ping";
/// #     type Output = String;
/// #     fn run(self, _: &MyTool) -> Result<String, PluginError> { Ok("pong".into()) }
/// # }
/// # impl TypedTool for MyTool {
/// #     type Config = NoConfig;
/// #     const NAME: &'static str = "MyTool";
/// #     const DESCRIPTION: &'static str = "";
/// #     fn new(_: NoConfig) -> Result<Self, PluginError> { Ok(MyTool) }
/// #     fn activities(set: &mut Activities<Self>) { set.add::<Ping>(); }
/// # }
/// # struct MyListener;
/// # impl EventListenerDriver for MyListener {
/// #     type Config = NoConfig;
/// #     const SYNC: bool = true;
/// #     fn new(_: NoConfig) -> Result<Self, PluginError> { Ok(MyListener) }
/// # }
/// plugin_api::export_plugin! {
///     driver: MyDriver,              // optional, implements PromptDriver
///     tool: MyTool,                  // optional, implements TypedTool (or the wire-level Tool)
///     listener: MyListener,          // optional, implements EventListenerDriver
///     id: "my-plugin",               // optional, default: the crate's name
///     description: "What it does",   // optional, default: the crate's description
/// }
/// # fn main() {}
/// ```
///
/// The plugin's version is its crate version, and its capabilities are those of the types
/// named here: the manifest need not repeat any of it. Use the macro once per `cdylib`.
#[macro_export]
macro_rules! export_plugin {
    ($($body:tt)*) => {
        $crate::__export_plugin! { @parse [] [] [] [] [] [] $($body)* }
    };
}

/// The parser behind [`export_plugin!`]: collects the keys in any order, then emits.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    // Accumulators, in order: [id] [description] [driver] [tool] [unused] [listener].
    (@parse [$($id:tt)+] $d:tt $dr:tt $t:tt $rt:tt $l:tt id: $($rest:tt)*) => {
        compile_error!("export_plugin!: `id` is given twice");
    };
    (@parse [] $d:tt $dr:tt $t:tt $rt:tt $l:tt id: $v:expr $(, $($rest:tt)*)?) => {
        $crate::__export_plugin! { @parse [$v] $d $dr $t $rt $l $($($rest)*)? }
    };
    (@parse $id:tt [$($d:tt)+] $dr:tt $t:tt $rt:tt $l:tt description: $($rest:tt)*) => {
        compile_error!("export_plugin!: `description` is given twice");
    };
    (@parse $id:tt [] $dr:tt $t:tt $rt:tt $l:tt description: $v:expr $(, $($rest:tt)*)?) => {
        $crate::__export_plugin! { @parse $id [$v] $dr $t $rt $l $($($rest)*)? }
    };
    (@parse $id:tt $d:tt [$($dr:tt)+] $t:tt $rt:tt $l:tt driver: $($rest:tt)*) => {
        compile_error!("export_plugin!: `driver` is given twice");
    };
    (@parse $id:tt $d:tt [] $t:tt $rt:tt $l:tt driver: $v:ty $(, $($rest:tt)*)?) => {
        $crate::__export_plugin! { @parse $id $d [$v] $t $rt $l $($($rest)*)? }
    };
    (@parse $id:tt $d:tt $dr:tt [$($t:tt)+] $rt:tt $l:tt tool: $($rest:tt)*) => {
        compile_error!("export_plugin!: `tool` is given twice");
    };
    (@parse $id:tt $d:tt $dr:tt [] $rt:tt $l:tt tool: $v:ty $(, $($rest:tt)*)?) => {
        $crate::__export_plugin! { @parse $id $d $dr [$v] $rt $l $($($rest)*)? }
    };
    (@parse $id:tt $d:tt $dr:tt $t:tt $rt:tt [$($l:tt)+] listener: $($rest:tt)*) => {
        compile_error!("export_plugin!: `listener` is given twice");
    };
    (@parse $id:tt $d:tt $dr:tt $t:tt $rt:tt [] listener: $v:ty $(, $($rest:tt)*)?) => {
        $crate::__export_plugin! { @parse $id $d $dr $t $rt [$v] $($($rest)*)? }
    };
    (@parse $id:tt $d:tt [] [] [] []) => {
        compile_error!("export_plugin!: name at least one of `driver`, `tool`, `listener`");
    };
    (@parse [$($id:expr)?] [$($desc:expr)?] [$($driver:ty)?] [$($tool:ty)?] [] [$($listener:ty)?]) => {
        $crate::__export_plugin! {
            @emit
            [$crate::__or_default!([$($id)?] env!("CARGO_PKG_NAME"))]
            [$crate::__or_default!([$($desc)?] env!("CARGO_PKG_DESCRIPTION"))]
            driver [$($driver)?]
            tool [$($tool)?]
            listener [$($listener)?]
        }
    };
    (@parse $id:tt $d:tt $dr:tt $t:tt $rt:tt $l:tt $key:ident : $($rest:tt)*) => {
        compile_error!(concat!(
            "export_plugin!: unknown key `", stringify!($key),
            "` (the keys are id, description, driver, tool, listener)"
        ));
    };
    (@emit
        [$id:expr]
        [$desc:expr]
        driver [$($driver:ty)?]
        tool [$($tool:ty)?]
        listener [$($listener:ty)?]
    ) => {
        const _: () = {
            extern "C" fn __grip_info() -> $crate::abi::PluginInfoFfi {
                $crate::sdk::ffi::plugin_info(
                    $id,
                    env!("CARGO_PKG_VERSION"),
                    $desc,
                    cfg!(panic = "unwind"),
                    $crate::abi::Capabilities::NONE
                        $(.union($crate::sdk::ffi::driver_caps::<$driver>()))?
                        $(.union({
                            use $crate::sdk::ffi::{ProbeTyped as _, ProbeWire as _};
                            (&$crate::sdk::ffi::ToolProbe::<$tool>::new()).tool_caps()
                        }))?
                        $(.union($crate::sdk::ffi::listener_caps::<$listener>()))?,
                )
            }

            extern "C" fn __grip_init(
                host: $crate::abi_v2::HostServicesV2,
            ) -> $crate::abi_stable::std_types::RResult<(), $crate::abi::PluginErrorFfi> {
                $crate::sdk::ffi::init(host)
            }

            #[allow(unreachable_code)]
            extern "C" fn __grip_new_driver(
                config: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<$crate::abi::PromptDriverBox, $crate::abi::PluginErrorFfi> {
                $(return $crate::sdk::ffi::new_driver::<$driver>(config);)?
                let _ = config;
                $crate::sdk::ffi::absent_kind("prompt driver")
            }

            #[allow(unreachable_code)]
            extern "C" fn __grip_new_tool(
                config: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<$crate::abi::ToolBox, $crate::abi::PluginErrorFfi> {
                $(return {
                    use $crate::sdk::ffi::{ProbeTyped as _, ProbeWire as _};
                    (&$crate::sdk::ffi::ToolProbe::<$tool>::new()).new_tool(config)
                };)?
                let _ = config;
                $crate::sdk::ffi::absent_kind("tool")
            }

            #[allow(unreachable_code)]
            extern "C" fn __grip_new_listener(
                config: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<$crate::abi::ListenerBox, $crate::abi::PluginErrorFfi> {
                $(return $crate::sdk::ffi::new_listener::<$listener>(config);)?
                let _ = config;
                $crate::sdk::ffi::absent_kind("event listener")
            }

            fn __grip_root_module() -> $crate::abi_v2::PluginModV2Ref {
                use $crate::sdk::ffi::PrefixTypeTrait as _;
                $crate::abi_v2::PluginModV2 {
                    info: __grip_info,
                    init: __grip_init,
                    new_driver: __grip_new_driver,
                    new_tool: __grip_new_tool,
                    new_listener: __grip_new_listener,
                }
                .leak_into_prefix()
            }

            extern "C" fn __grip_root_module_loader() -> $crate::abi_stable::library::RootModuleResult {
                $crate::sdk::ffi::call_root_module_loader(__grip_root_module)
            }

            /// The symbol the host looks up (abi_stable's mangled root-module loader name).
            #[unsafe(no_mangle)]
            #[allow(non_upper_case_globals)]
            pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader =
                $crate::sdk::ffi::lib_header_v2(__grip_root_module_loader);
        };
    };
}

/// `[value] default` gives the value when there is one, else the default.
#[doc(hidden)]
#[macro_export]
macro_rules! __or_default {
    ([$v:expr] $default:expr) => {
        $v
    };
    ([] $default:expr) => {
        $default
    };
}
