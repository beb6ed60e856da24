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
//! ```
//! use plugin_api::prelude::*;
//!
//! struct Shout;
//!
//! impl Tool for Shout {
//!     type Config = NoConfig;
//!     const SYNC: bool = true;
//!
//!     fn new(_: NoConfig) -> Result<Self, PluginError> {
//!         Ok(Shout)
//!     }
//!
//!     fn spec(&self) -> ToolSpec {
//!         ToolSpec::new("Shout", "Upper-cases text").activity(
//!             "shout",
//!             "Returns the text in capitals",
//!             serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
//!         )
//!     }
//!
//!     fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
//!         let text = call.input["text"].as_str().unwrap_or_default();
//!         Ok(ToolOutput::ok(text.to_uppercase()))
//!     }
//! }
//!
//! plugin_api::export_plugin! {
//!     id: "shout",
//!     description: "Upper-cases text",
//!     tool: Shout,
//! }
//! # fn main() {}
//! ```

pub mod abi;
pub mod sdk;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use abi_stable;
pub use async_ffi;
pub use futures;
pub use serde_json;
pub use tokio;
pub use tracing;

pub use sdk::{
    DeltaStream, ErrorKind, EventListenerDriver, NoConfig, PluginError, PromptDriver, Tool,
    block_on, spawn_blocking,
};

/// Everything an author usually needs.
pub mod prelude {
    pub use crate::sdk::{
        DeltaStream, ErrorKind, EventListenerDriver, NoConfig, PluginError, PromptDriver, Tool,
        block_on, spawn_blocking,
    };
    pub use crate::serde_json;
    pub use crate::wire::{
        Activity, Event, EventKind, FunctionSpec, Message, PromptRequest, PromptResponse, Role,
        StreamDelta, ToolCall, ToolInvocation, ToolOutput, ToolSpec, Usage,
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
/// Name the plugin's id and the types implementing each kind it provides (at least one):
///
/// ```
/// # use plugin_api::prelude::*;
/// # struct MyDriver;
/// # impl PromptDriver for MyDriver {
/// #     type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, PluginError> { Ok(MyDriver) }
/// # }
/// # struct MyTool;
/// # impl Tool for MyTool {
/// #     type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, PluginError> { Ok(MyTool) }
/// #     fn spec(&self) -> ToolSpec { ToolSpec::new("MyTool", "") }
/// # }
/// # struct MyListener;
/// # impl EventListenerDriver for MyListener {
/// #     type Config = NoConfig;
/// #     fn new(_: NoConfig) -> Result<Self, PluginError> { Ok(MyListener) }
/// # }
/// plugin_api::export_plugin! {
///     id: "my-plugin",
///     description: "What it does",   // optional
///     driver: MyDriver,              // optional, implements PromptDriver
///     tool: MyTool,                  // optional, implements Tool
///     listener: MyListener,          // optional, implements EventListenerDriver
/// }
/// # fn main() {}
/// ```
///
/// The plugin's version is its crate version. Use the macro once per `cdylib`.
#[macro_export]
macro_rules! export_plugin {
    (
        id: $id:expr
        $(, description: $desc:expr)?
        $(, driver: $driver:ty)?
        $(, tool: $tool:ty)?
        $(, listener: $listener:ty)?
        $(,)?
    ) => {
        const _: () = {
            extern "C" fn __grip_info() -> $crate::abi::PluginInfoFfi {
                let descriptions: &[&str] = &[$($desc)?];
                $crate::sdk::ffi::plugin_info(
                    $id,
                    env!("CARGO_PKG_VERSION"),
                    descriptions.first().copied().unwrap_or(""),
                    cfg!(panic = "unwind"),
                    $crate::abi::Capabilities::NONE
                        $(.union($crate::sdk::ffi::driver_caps::<$driver>()))?
                        $(.union($crate::sdk::ffi::tool_caps::<$tool>()))?
                        $(.union($crate::sdk::ffi::listener_caps::<$listener>()))?,
                )
            }

            extern "C" fn __grip_init(
                host: $crate::abi::HostServicesV1,
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
                $(return $crate::sdk::ffi::new_tool::<$tool>(config);)?
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

            fn __grip_root_module() -> $crate::abi::PluginModV1Ref {
                use $crate::sdk::ffi::PrefixTypeTrait as _;
                $crate::abi::PluginModV1 {
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
                $crate::sdk::ffi::lib_header_v1(__grip_root_module_loader);
        };
    };
}
