//! What the typed authoring layer refuses at compile time: an activity registered for a mode
//! it does not implement, and a misspelt `export_plugin!` key.

#[test]
fn declared_but_not_implemented_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
