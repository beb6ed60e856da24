//! A plugin for a future ABI generation (root-module version 3.0.0): the host must refuse it
//! with a one-line reason before looking at its layout.

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_extern_fn, sabi_types::VersionStrings, StableAbi,
};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModV3Ref)))]
pub struct PluginModV3 {
    #[sabi(last_prefix_field)]
    pub generation: extern "C" fn() -> u32,
}

impl RootModule for PluginModV3Ref {
    declare_root_module_statics! {PluginModV3Ref}
    const BASE_NAME: &'static str = "grip_plugin";
    const NAME: &'static str = "grip_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("3.0.0");
}

#[sabi_extern_fn]
fn generation() -> u32 {
    3
}

#[export_root_module]
pub fn root() -> PluginModV3Ref {
    PluginModV3 { generation }.leak_into_prefix()
}
