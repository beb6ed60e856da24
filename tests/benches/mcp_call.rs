//! What an MCP tool costs against the same tool in process, in one run: per-call latency and CPU
//! of the calculator loaded in the host vs the calculator behind MCP (`grip mcp serve --tool
//! calculator` as a stdio server, grip's `[mcp]` client in front of it: both sides are rmcp),
//! vs a third-party server (the probe's `add`, on the official Python SDK); and the start-up time
//! (spawn + `initialize` + `tools/list`) of each stdio server.
//!
//! Calls are sequential (one at a time, the latency a task sees). CPU is this process's (the
//! client: grip's host) plus the server's, read from /proc. Run with `cargo bench -p e2e --bench
//! mcp_call` (`-- N` for another number of calls; the default is 2,000).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::artifacts;
use e2e::load::percentile;
use e2e::mcp::{everything_server, probe_manifest, stdio_manifest, time_server};
use e2e::procs::cpu_time;
use host::{Registry, ToolHandle};
use plugin_api::wire::{ToolInvocation, WIRE_VERSION};
use serde_json::{Value, json};

struct Row {
    name: &'static str,
    p50: Duration,
    p99: Duration,
    cpu_per_call: Duration,
}

async fn measure(
    name: &'static str,
    t: &ToolHandle,
    activity: &str,
    input: Value,
    n: usize,
    server: Option<u32>,
) -> Row {
    let inv = ToolInvocation {
        schema_version: WIRE_VERSION,
        activity: activity.into(),
        input,
        call_id: "b".into(),
    };
    for _ in 0..n / 10 {
        t.call_async(&inv).await.expect("warm-up call");
    }
    let (cpu0, server0) = (cpu_time(None), server.map(|p| cpu_time(Some(p))));
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        let out = t.call_async(&inv).await.expect("call");
        assert!(!out.is_error, "{out:?}");
        lat.push(began.elapsed());
    }
    let cpu = cpu_time(None) - cpu0
        + server.map_or(Duration::ZERO, |p| {
            cpu_time(Some(p)) - server0.unwrap_or_default()
        });
    lat.sort();
    Row {
        name,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        cpu_per_call: cpu / n as u32,
    }
}

/// The median of `runs` cold starts of plugin `id`: a registry loaded, its first tool made.
fn start_up(dir: &Path, id: &str, runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let r = Registry::load_dirs(&[dir.to_owned()], &artifacts().options());
            let began = Instant::now();
            r.get(id)
                .expect("loaded")
                .new_tool(None)
                .expect("server up");
            let took = began.elapsed();
            drop(r);
            took
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000usize);
    let a = artifacts();
    let (dir, probe) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let served = dir.path().join("served");
    std::fs::create_dir(&served).expect("dir");
    std::fs::copy(
        a.root.join("manifests/calculator.toml"),
        served.join("calculator.toml"),
    )
    .expect("copy");
    std::fs::copy(
        a.root.join("manifests/calculator.toml"),
        dir.path().join("calculator.toml"),
    )
    .expect("copy");
    let served_arg = served.display().to_string();
    stdio_manifest(
        dir.path(),
        "mcp-calc",
        &a.grip(),
        &[
            "mcp",
            "serve",
            "--tool",
            "calculator",
            "--no-default-manifests",
            "--manifests",
            &served_arg,
        ],
        &format!(
            "env = {{ GRIP_LIB_PATH = {:?} }}",
            a.lib_dir.display().to_string()
        ),
    );
    probe_manifest(dir.path(), "probe", probe.path(), "");
    stdio_manifest(dir.path(), "time", &time_server(), &[], "");
    stdio_manifest(dir.path(), "everything", &everything_server(), &[], "");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = Registry::load_dirs(&[dir.path().to_owned()], &a.options());
    let tool = |id: &str| r.get(id).expect("loaded").new_tool(None).expect("tool");
    let pid = |id: &str| r.get(id).and_then(host::Plugin::child_pid);
    let expr = json!({"expression": "(1234 * 5678) / 2 + 17"});
    let (calc, mcp_calc, py) = (tool("calculator"), tool("mcp-calc"), tool("probe"));
    let rows = rt.block_on(async {
        vec![
            measure(
                "calculator in process",
                &calc,
                "calculate",
                expr.clone(),
                n,
                None,
            )
            .await,
            measure(
                "calculator over MCP stdio (grip mcp serve)",
                &mcp_calc,
                "Calculator_calculate",
                expr,
                n,
                pid("mcp-calc"),
            )
            .await,
            measure(
                "add over MCP stdio (Python SDK server)",
                &py,
                "add",
                json!({"a": 2, "b": 3}),
                n,
                pid("probe"),
            )
            .await,
        ]
    });
    drop(r);

    let (base_p50, base_cpu) = (rows[0].p50, rows[0].cpu_per_call);
    println!("\n{n} sequential calls each, CPU = grip's + the server's process:\n");
    println!("| tool | p50 | p99 | CPU per call | p50 vs in process | CPU vs in process |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1}x | {:.1}x |",
            row.name,
            us(row.p50),
            us(row.p99),
            us(row.cpu_per_call),
            row.p50.as_secs_f64() / base_p50.as_secs_f64(),
            row.cpu_per_call.as_secs_f64() / base_cpu.as_secs_f64(),
        );
    }
    println!("\nStart-up of a stdio server (spawn, initialize, tools/list), median of 5:\n");
    println!("| server | start-up |");
    println!("|---|---:|");
    for (id, what) in [
        ("mcp-calc", "grip mcp serve --tool calculator (Rust, rmcp)"),
        ("probe", "the probe (Python, official SDK)"),
        ("time", "mcp-server-time (Python, PyPI)"),
        ("everything", "server-everything (Node, npm)"),
    ] {
        println!(
            "| {what} | {:.0} ms |",
            start_up(dir.path(), id, 5).as_secs_f64() * 1e3
        );
    }
}
