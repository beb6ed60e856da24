//! Claims to be a generation-1 grip plugin (same root-module name and version) but its root
//! module has a different layout: the host must refuse it with a one-line reason.

use abi_stable::{
    declare_root_module_statics, export_root_module,
    library::RootModule,
    package_version_strings,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_types::VersionStrings,
    std_types::{RStr, RString},
    StableAbi,
};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModV1Ref)))]
pub struct PluginModV1 {
    pub info: extern "C" fn() -> RString,
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(RStr<'_>) -> u32,
}

impl RootModule for PluginModV1Ref {
    declare_root_module_statics! {PluginModV1Ref}
    const BASE_NAME: &'static str = "grip_plugin";
    const NAME: &'static str = "grip_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

#[sabi_extern_fn]
fn info() -> RString {
    RString::from("not what the host expects")
}

#[sabi_extern_fn]
fn init(_: RStr<'_>) -> u32 {
    0
}

#[export_root_module]
pub fn root() -> PluginModV1Ref {
    let _ = package_version_strings!();
    PluginModV1 { info, init }.leak_into_prefix()
}
