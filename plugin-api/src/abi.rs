//! The frozen, generation-1 binary interface between the host and a plugin.
//!
//! Everything in this module crosses a shared-library boundary, so it is `#[repr(C)]` and
//! derives [`StableAbi`]: the host checks the layout of every type reachable from
//! [`PluginModV1`] against the plugin's copy before it calls anything.
//!
//! # The rule for changing the ABI
//!
//! **Nothing in this module is ever edited once shipped.** abi_stable accepts a plugin only when
//! it is at least as new as the host, so appending a field to a prefix type or a method to a
//! `#[sabi_trait]` would reject every plugin built before the change. A change of ABI is a new
//! generation: new types (`PluginModV2`, ...), a new [`AbiGeneration`], and a host that tries the
//! newest generation it knows first and falls back to older ones.
//!
//! Enumerations that may grow are `u32` newtypes with associated constants, never Rust enums (a
//! new variant would change the layout). Requests, responses and events evolve, so they cross
//! as versioned JSON (see [`crate::wire`]) rather than as ABI structs.
//!
//! Plugin authors never touch this module: [`crate::export_plugin!`] generates all of it.
#![allow(unsafe_code)] // `#[derive(StableAbi)]` and `#[sabi_trait]` expand to unsafe impls.
#![allow(non_local_definitions)] // abi_stable 0.11 `#[sabi_trait]` expansion

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString},
};
use async_ffi::{FfiContext, FfiFuture, FfiPoll};

/// The generation of the binary interface. Generation 1 is [`PluginModV1`].
pub type AbiGeneration = u32;

/// The generation this crate's [`PluginModV1`] implements.
pub const ABI_GENERATION_V1: AbiGeneration = 1;

/// The name every grip plugin's root module carries (checked by the host before anything else).
pub const ROOT_MODULE_NAME: &str = "grip_plugin";

/// Version strings of the root module: the major number is the ABI generation.
///
/// This deliberately does not follow the `plugin-api` crate version: abi_stable rejects a
/// library whose minor version is older than the host's, which would orphan every plugin at
/// each minor release of `plugin-api`. The layout check is what guards compatibility.
pub const ROOT_MODULE_VERSION_V1: &str = "1.0.0";

/// What a plugin can do, as a bit set: three kinds times three modes.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// No capability.
    pub const NONE: Self = Self(0);
    /// Prompt driver, blocking call.
    pub const DRIVER_SYNC: Self = Self(1);
    /// Prompt driver, future.
    pub const DRIVER_ASYNC: Self = Self(1 << 1);
    /// Prompt driver, stream of deltas.
    pub const DRIVER_STREAM: Self = Self(1 << 2);
    /// Tool, blocking call.
    pub const TOOL_SYNC: Self = Self(1 << 8);
    /// Tool, future.
    pub const TOOL_ASYNC: Self = Self(1 << 9);
    /// Event listener driver, blocking call.
    pub const LISTENER_SYNC: Self = Self(1 << 16);
    /// Event listener driver, future.
    pub const LISTENER_ASYNC: Self = Self(1 << 17);

    /// Bit offset of each kind's modes.
    pub const DRIVER_SHIFT: u32 = 0;
    /// Bit offset of each kind's modes.
    pub const TOOL_SHIFT: u32 = 8;
    /// Bit offset of each kind's modes.
    pub const LISTENER_SHIFT: u32 = 16;

    /// Every capability this generation knows of.
    pub const ALL_KNOWN: Self = Self(0b111 | (0b11 << 8) | (0b11 << 16));

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of two sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Capabilities({:#x})", self.0)
    }
}

/// How the plugin was compiled to handle panics.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Debug)]
pub struct PanicStrategy(pub u32);

impl PanicStrategy {
    /// `panic = "unwind"`: panics are caught by the SDK and become errors.
    pub const UNWIND: Self = Self(1);
    /// `panic = "abort"`: any panic ends the host process; the host refuses such plugins.
    pub const ABORT: Self = Self(2);
}

/// The kind of an error returned across the boundary.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ErrorKindFfi(pub u32);

/// Severity of a log record forwarded to the host.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Debug)]
pub struct LogLevel(pub u32);

impl LogLevel {
    /// `tracing::Level::ERROR`
    pub const ERROR: Self = Self(1);
    /// `tracing::Level::WARN`
    pub const WARN: Self = Self(2);
    /// `tracing::Level::INFO`
    pub const INFO: Self = Self(3);
    /// `tracing::Level::DEBUG`
    pub const DEBUG: Self = Self(4);
    /// `tracing::Level::TRACE`
    pub const TRACE: Self = Self(5);
}

/// An error value as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginErrorFfi {
    /// See [`crate::ErrorKind`].
    pub kind: ErrorKindFfi,
    /// Whether the same call may succeed if retried.
    pub retryable: bool,
    /// Human-readable message.
    pub message: RString,
}

/// What a plugin says about itself; read by the host right after the layout check.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginInfoFfi {
    /// Unique id; must equal the manifest's `id`.
    pub id: RString,
    /// The plugin crate's version.
    pub version: RString,
    /// One-line description.
    pub description: RString,
    /// ABI generation the plugin was built for.
    pub abi_generation: AbiGeneration,
    /// Highest [`crate::wire::WIRE_VERSION`] the plugin understands.
    pub wire_version: u32,
    /// Version of `plugin-api` the plugin was built with.
    pub sdk_version: RString,
    /// How the plugin handles panics.
    pub panic_strategy: PanicStrategy,
    /// Every capability the plugin implements.
    pub capabilities: Capabilities,
}

/// Services the host offers to a plugin, passed once at [`PluginModV1::init`].
#[repr(C)]
#[derive(StableAbi, Copy, Clone)]
pub struct HostServicesV1 {
    /// Opaque value the host uses to tell plugins apart; passed back on every call.
    pub handle: u64,
    /// Forwards one log record into the host's `tracing`.
    pub log: extern "C" fn(handle: u64, level: LogLevel, target: RStr<'_>, message: RStr<'_>),
}

/// Result of a call that produces a JSON payload.
pub type JsonResult = RResult<RString, PluginErrorFfi>;
/// Result of a call that produces nothing.
pub type UnitResult = RResult<(), PluginErrorFfi>;

/// A prompt driver instance. JSON in, JSON out: see [`crate::wire::PromptRequest`].
#[sabi_trait]
pub trait PromptDriverFfi: Send + Sync {
    /// Blocking prompt; returns a [`crate::wire::PromptResponse`].
    fn prompt(&self, request: RStr<'_>) -> JsonResult;
    /// Prompt as a future; returns a [`crate::wire::PromptResponse`].
    fn prompt_async(&self, request: RString) -> FfiFuture<JsonResult>;
    /// Opens a stream of [`crate::wire::StreamDelta`]s.
    #[sabi(last_prefix_field)]
    fn stream(&self, request: RString) -> RResult<DeltaStreamBox, PluginErrorFfi>;
}

/// A stream of JSON [`crate::wire::StreamDelta`]s, pulled by the host. Dropping it cancels it.
#[sabi_trait]
pub trait DeltaStreamFfi: Send {
    /// `Ready(RSome(..))` for an item, `Ready(RNone)` at the end.
    #[sabi(last_prefix_field)]
    fn poll_next(&mut self, cx: &mut FfiContext<'_>) -> FfiPoll<ROption<JsonResult>>;
}

/// A tool instance.
#[sabi_trait]
pub trait ToolFfi: Send + Sync {
    /// The tool's [`crate::wire::ToolSpec`] as JSON.
    fn spec(&self) -> JsonResult;
    /// Blocking call with a [`crate::wire::ToolInvocation`]; returns a [`crate::wire::ToolOutput`].
    fn call(&self, invocation: RStr<'_>) -> JsonResult;
    /// Call as a future.
    #[sabi(last_prefix_field)]
    fn call_async(&self, invocation: RString) -> FfiFuture<JsonResult>;
}

/// An event listener driver instance: receives batches of events (a JSON array).
#[sabi_trait]
pub trait ListenerFfi: Send + Sync {
    /// Blocking publish of a JSON array of [`crate::wire::Event`]s.
    fn publish(&self, events: RStr<'_>) -> UnitResult;
    /// Publish as a future.
    fn publish_async(&self, events: RString) -> FfiFuture<UnitResult>;
    /// Blocking flush of anything buffered.
    fn flush(&self) -> UnitResult;
    /// Flush as a future.
    #[sabi(last_prefix_field)]
    fn flush_async(&self) -> FfiFuture<UnitResult>;
}

/// Owned, type-erased prompt driver.
pub type PromptDriverBox = PromptDriverFfi_TO<'static, RBox<()>>;
/// Owned, type-erased delta stream.
pub type DeltaStreamBox = DeltaStreamFfi_TO<'static, RBox<()>>;
/// Owned, type-erased tool.
pub type ToolBox = ToolFfi_TO<'static, RBox<()>>;
/// Owned, type-erased listener driver.
pub type ListenerBox = ListenerFfi_TO<'static, RBox<()>>;

/// The root module of a generation-1 plugin.
///
/// Every field is required: the type is frozen, so there is never an older plugin lacking one.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModV1Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModV1 {
    /// Describes the plugin.
    pub info: extern "C" fn() -> PluginInfoFfi,
    /// Called once by the host before any instance is made.
    pub init: extern "C" fn(host: HostServicesV1) -> UnitResult,
    /// Makes a prompt driver from a JSON config object.
    pub new_driver: extern "C" fn(config: RStr<'_>) -> RResult<PromptDriverBox, PluginErrorFfi>,
    /// Makes a tool from a JSON config object.
    pub new_tool: extern "C" fn(config: RStr<'_>) -> RResult<ToolBox, PluginErrorFfi>,
    /// Makes an event listener driver from a JSON config object.
    #[sabi(last_prefix_field)]
    pub new_listener: extern "C" fn(config: RStr<'_>) -> RResult<ListenerBox, PluginErrorFfi>,
}

impl RootModule for PluginModV1Ref {
    declare_root_module_statics! {PluginModV1Ref}
    const BASE_NAME: &'static str = ROOT_MODULE_NAME;
    const NAME: &'static str = ROOT_MODULE_NAME;
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ROOT_MODULE_VERSION_V1);
}
