//! The test suite's OpenAI-compatible mock server as a process of its own, for benchmarks that
//! must not count the server's CPU: prints its base URL, serves until stdin closes.
//!
//! Run with `cargo run -p e2e --bin mock-openai [latency_ms]`.

fn main() {
    let server = e2e::mock_llm::MockLlm::start();
    if let Some(ms) = std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        server.set_default_latency(ms);
    }
    println!("{}", server.base_url());
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}
