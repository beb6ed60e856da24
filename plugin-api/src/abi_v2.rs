//! ABI generation 2: generation 1 plus host services a plugin can call, above all an HTTP
//! client that runs on the host's own runtime.
//!
//! Why: in generation 1 every plugin owns a tokio runtime, so each upstream request of a remote
//! driver crosses threads twice (the host's worker hands the request to the plugin runtime's
//! connection task, whose reactor thread hands the answer back): about five thread wake-ups
//! per task that a hand-written proxy does not pay. With [`HostServicesV2::http`] the request,
//! its connection and its body are the host's; the plugin's future is polled by the host's
//! worker and nothing else wakes. The host also gets one connection pool for every plugin.
//!
//! Only the root module's `init` and the host services differ from generation 1; the instance
//! traits ([`crate::abi::PromptDriverFfi`], ...) are generation 1's, unchanged. As with
//! generation 1, **nothing here is edited once shipped**; request and response heads cross as
//! JSON ([`crate::wire::HttpRequestHead`], [`crate::wire::HttpResponseHead`]) so they can grow.
//!
//! A host that knows generation 2 tries it first and loads generation-1 plugins as before.
#![allow(unsafe_code)] // `#[derive(StableAbi)]` and `#[sabi_trait]` expand to unsafe impls.
#![allow(non_local_definitions)] // abi_stable 0.11 `#[sabi_trait]` expansion

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
};
use async_ffi::{FfiContext, FfiFuture, FfiPoll};

use crate::abi::{
    AbiGeneration, ListenerBox, LogLevel, PluginErrorFfi, PluginInfoFfi, PromptDriverBox,
    ROOT_MODULE_NAME, ToolBox, UnitResult,
};

/// The generation [`PluginModV2`] implements.
pub const ABI_GENERATION_V2: AbiGeneration = 2;

/// Version strings of generation 2's root module (the major number is the generation).
pub const ROOT_MODULE_VERSION_V2: &str = "2.0.0";

/// An HTTP request a plugin asks the host to send.
#[repr(C)]
#[derive(StableAbi)]
pub struct HttpRequestFfi {
    /// A [`crate::wire::HttpRequestHead`] as JSON.
    pub head: RString,
    /// The request body.
    pub body: RVec<u8>,
}

/// The host's answer: the response head and its body, read by pulling.
#[repr(C)]
#[derive(StableAbi)]
pub struct HttpResponseFfi {
    /// A [`crate::wire::HttpResponseHead`] as JSON.
    pub head: RString,
    /// The body, chunk by chunk. Dropping it cancels the rest of the exchange.
    pub body: HttpBodyBox,
}

/// A response body, pulled by the plugin.
#[sabi_trait]
pub trait HttpBodyFfi: Send {
    /// `Ready(RSome(Ok(..)))` for a chunk, `Ready(RNone)` at the end, an error for a transport
    /// failure or a timeout mid-body (its kind says which).
    #[sabi(last_prefix_field)]
    fn poll_chunk(
        &mut self,
        cx: &mut FfiContext<'_>,
    ) -> FfiPoll<ROption<RResult<RVec<u8>, PluginErrorFfi>>>;
}

/// Owned, type-erased response body.
pub type HttpBodyBox = HttpBodyFfi_TO<'static, RBox<()>>;

/// Result of [`HostServicesV2::http`].
pub type HttpResult = RResult<HttpResponseFfi, PluginErrorFfi>;

/// Services the host offers to a generation-2 plugin, passed once at [`PluginModV2::init`].
#[repr(C)]
#[derive(StableAbi, Copy, Clone)]
pub struct HostServicesV2 {
    /// Opaque value the host uses to tell plugins apart; passed back on every call.
    pub handle: u64,
    /// Forwards one log record into the host's `tracing`.
    pub log: extern "C" fn(handle: u64, level: LogLevel, target: RStr<'_>, message: RStr<'_>),
    /// The most verbose level the host records from plugins (`LogLevel(0)`: none), so that a
    /// plugin does not format records that would be dropped.
    pub max_log_level: LogLevel,
    /// Sends an HTTP request on the host's client; the future resolves with the response head
    /// (any status) once it has arrived. Errors: `Timeout` for a timeout, `Upstream` for a
    /// connection or protocol failure (retryable), `InvalidInput` for a malformed request.
    pub http: extern "C" fn(handle: u64, request: HttpRequestFfi) -> FfiFuture<HttpResult>,
}

/// The root module of a generation-2 plugin: generation 1's, with [`HostServicesV2`] at init.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModV2Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModV2 {
    /// Describes the plugin.
    pub info: extern "C" fn() -> PluginInfoFfi,
    /// Called once by the host before any instance is made.
    pub init: extern "C" fn(host: HostServicesV2) -> UnitResult,
    /// Makes a prompt driver from a JSON config object.
    pub new_driver: extern "C" fn(config: RStr<'_>) -> RResult<PromptDriverBox, PluginErrorFfi>,
    /// Makes a tool from a JSON config object.
    pub new_tool: extern "C" fn(config: RStr<'_>) -> RResult<ToolBox, PluginErrorFfi>,
    /// Makes an event listener driver from a JSON config object.
    #[sabi(last_prefix_field)]
    pub new_listener: extern "C" fn(config: RStr<'_>) -> RResult<ListenerBox, PluginErrorFfi>,
}

impl RootModule for PluginModV2Ref {
    declare_root_module_statics! {PluginModV2Ref}
    const BASE_NAME: &'static str = ROOT_MODULE_NAME;
    const NAME: &'static str = ROOT_MODULE_NAME;
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ROOT_MODULE_VERSION_V2);
}
