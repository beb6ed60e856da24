//! The test suite's mock LLM server as a process of its own, for benchmarks that must not count
//! the server's CPU: prints its base URL, serves until stdin closes. It speaks the OpenAI wire
//! format, or Anthropic's with the argument `anthropic`.
//!
//! Run with `cargo run -p e2e --bin mock-openai [anthropic] [latency_ms] [rate_limit=PCT]
//! [truncate=PCT] [seed=N]` (the last three inject faults: see `mock_llm::Faults`).

use e2e::mock_llm::{Faults, MockLlm, Wire};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wire = if args.iter().any(|a| a == "anthropic") {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    let server = MockLlm::start_with(wire);
    if let Some(ms) = args.iter().find_map(|a| a.parse().ok()) {
        server.set_default_latency(ms);
    }
    if let Some(faults) = Faults::from_args(&args) {
        server.set_faults(faults);
    }
    println!("{}", server.base_url());
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}
