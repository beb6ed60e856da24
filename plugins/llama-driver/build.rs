//! Nothing to build. This script exists for its build-dependency: llama.cpp's bindings are made
//! by bindgen, whose `regex` would otherwise get different features depending on which
//! packages one `cargo` invocation selects, and each difference rebuilds llama.cpp (minutes).
//! Asking for regex's default features here makes every invocation agree.
fn main() {}
