//! A generation-1 plugin written against the raw ABI, without the SDK's guards, that misbehaves:
//! it returns malformed JSON, and its future and stream panic unguarded. The host must turn each
//! into an error naming the plugin and keep running.
#![allow(unsafe_code)]

use plugin_api::abi::*;
use plugin_api::abi_stable::prefix_type::PrefixTypeTrait;
use plugin_api::abi_stable::sabi_trait::TD_Opaque;
use plugin_api::abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};
use plugin_api::async_ffi::{FfiContext, FfiFuture, FfiPoll};

struct Garbage;

impl PromptDriverFfi for Garbage {
    fn prompt(&self, _: RStr<'_>) -> JsonResult {
        ROk(RString::from("{this is not json"))
    }

    fn prompt_async(&self, _: RString) -> FfiFuture<JsonResult> {
        FfiFuture::new(async { panic!("unguarded panic in a future") })
    }

    fn stream(&self, _: RString) -> RResult<DeltaStreamBox, PluginErrorFfi> {
        ROk(DeltaStreamFfi_TO::from_value(GarbageStream(0), TD_Opaque))
    }
}

struct GarbageStream(u32);

impl DeltaStreamFfi for GarbageStream {
    fn poll_next(
        &mut self,
        _: &mut FfiContext<'_>,
    ) -> FfiPoll<plugin_api::abi_stable::std_types::ROption<JsonResult>> {
        self.0 += 1;
        match self.0 {
            1 => FfiPoll::Ready(plugin_api::abi_stable::std_types::RSome(ROk(
                RString::from("[1, 2"),
            ))),
            _ => FfiPoll::Panicked,
        }
    }
}

extern "C" fn info() -> PluginInfoFfi {
    PluginInfoFfi {
        id: "raw".into(),
        version: "0.1.0".into(),
        description: "misbehaves".into(),
        abi_generation: ABI_GENERATION_V1,
        wire_version: 1,
        sdk_version: "1.0.0".into(),
        panic_strategy: PanicStrategy::UNWIND,
        capabilities: Capabilities::DRIVER_SYNC
            | Capabilities::DRIVER_ASYNC
            | Capabilities::DRIVER_STREAM,
    }
}

extern "C" fn init(_: HostServicesV1) -> UnitResult {
    ROk(())
}

extern "C" fn new_driver(_: RStr<'_>) -> RResult<PromptDriverBox, PluginErrorFfi> {
    ROk(PromptDriverFfi_TO::from_value(Garbage, TD_Opaque))
}

extern "C" fn new_tool(_: RStr<'_>) -> RResult<ToolBox, PluginErrorFfi> {
    RErr(PluginErrorFfi {
        kind: ErrorKindFfi(2),
        retryable: false,
        message: "no tool".into(),
    })
}

extern "C" fn new_listener(_: RStr<'_>) -> RResult<ListenerBox, PluginErrorFfi> {
    RErr(PluginErrorFfi {
        kind: ErrorKindFfi(2),
        retryable: false,
        message: "no listener".into(),
    })
}

fn root() -> PluginModV1Ref {
    PluginModV1 {
        info,
        init,
        new_driver,
        new_tool,
        new_listener,
    }
    .leak_into_prefix()
}

extern "C" fn loader() -> plugin_api::abi_stable::library::RootModuleResult {
    plugin_api::sdk::ffi::call_root_module_loader(root)
}

#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static _1as_0lib_1header_0root_bmodule_bloader: plugin_api::abi_stable::library::LibHeader =
    plugin_api::sdk::ffi::lib_header_v1(loader);
