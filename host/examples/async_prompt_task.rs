//! The spec's basic async example: a PromptTask on an async driver, with a tool, awaited with
//! `async_run()`.
//!
//! Run with `cargo build && cargo run -p host --example async_prompt_task`.

use host::{LoaderOptions, PromptTask, Registry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let registry = Registry::load_dirs(&["manifests".into()], &LoaderOptions::from_env());
    for refused in registry.refused() {
        eprintln!("warning: {}", refused.error);
    }
    // The scripted driver stands in for an async chat model: first it calls a tool, then it
    // answers with the tool's result in view.
    let script = serde_json::json!({"script": [
        {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "What is two plus two"}}]},
        {"text": "Your question has 5 words."}
    ]});
    let driver = registry
        .get("scripted")
        .ok_or_else(|| {
            anyhow::anyhow!("the scripted plugin is not loaded: run `cargo build` first")
        })?
        .new_driver(Some(&script))?;
    let tools = registry
        .get("text-tools")
        .map(|p| p.new_tool(None))
        .transpose()?;

    let task = PromptTask::new(driver, "What is two plus two").tools(tools);
    let result = task.async_run().await?;
    println!("{}", result.text);
    Ok(())
}
