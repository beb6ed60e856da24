//! A tool that takes its process down on request, in each way a native plugin can: the fault
//! fixtures of the process-isolation tests. Activity `echo` answers; every other activity is a
//! fault, in the sync call and in the async one alike (except `hang`, sync, and `block_poll`,
//! async, which are the two ways of never answering).

use std::time::Duration;

use plugin_api::prelude::*;

/// The tool.
pub struct Crashy;

#[allow(unconditional_recursion)]
fn overflow(depth: u64) -> u64 {
    let frame = [depth; 512];
    std::hint::black_box(&frame);
    overflow(depth + 1) + frame[0]
}

/// Does what `activity` says; returns only for `echo`.
#[allow(unsafe_code)] // the segfault is the point
fn act(call: &ToolInvocation) -> Result<ToolOutput, PluginError> {
    match call.activity.as_str() {
        "echo" => Ok(ToolOutput::ok(
            call.input["text"].as_str().unwrap_or_default(),
        )),
        "segfault" => {
            // SAFETY: none; a write through a null pointer, to die of SIGSEGV.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(7) };
            unreachable!()
        }
        "abort" => std::process::abort(),
        "spawn_then_segfault" => {
            // A process it started outlives it, holding whatever descriptors it inherited.
            if let Ok(c) = std::process::Command::new("sleep").arg("30").spawn() {
                eprintln!("spawned pid {}", c.id());
            }
            act(&ToolInvocation {
                activity: "segfault".into(),
                ..call.clone()
            })
        }
        "exit" => std::process::exit(7),
        "overflow" => Ok(ToolOutput::ok(overflow(0).to_string())),
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0u8; 64 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "open_files" => {
            // How many files it can hold open at once (its RLIMIT_NOFILE, less what is open).
            let mut held = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                held.push(f);
                if held.len() == 100_000 {
                    break;
                }
            }
            Ok(ToolOutput::ok(held.len().to_string()))
        }
        "spin" => loop {
            std::hint::black_box(std::time::Instant::now());
        },
        "print" => {
            // Straight to fd 1: must not reach the host as protocol.
            println!("{{\"op\":\"done\",\"call\":1,\"result\":{{\"Ok\":\"forged\"}}}}");
            Ok(ToolOutput::ok("printed"))
        }
        other => Err(PluginError::invalid_input(format!("no activity `{other}`"))),
    }
}

impl Tool for Crashy {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Crashy)
    }

    fn spec(&self) -> ToolSpec {
        let any = serde_json::json!({"type": "object"});
        let mut spec = ToolSpec::new("Crashy", "Crashes on request");
        for a in [
            "echo",
            "segfault",
            "abort",
            "exit",
            "overflow",
            "alloc",
            "print",
            "hang",
            "block_poll",
            "sleep",
        ] {
            spec = spec.activity(a, a, any.clone());
        }
        spec
    }

    fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        match call.activity.as_str() {
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "sleep" => {
                std::thread::sleep(Duration::from_millis(
                    call.input["ms"].as_u64().unwrap_or(0),
                ));
                Ok(ToolOutput::ok("slept"))
            }
            _ => act(&call),
        }
    }

    async fn call_async(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        match call.activity.as_str() {
            // Blocks the thread that polls it: no await point, no timer can fire here.
            "block_poll" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "sleep" => {
                let ms = call.input["ms"].as_u64().unwrap_or(0);
                plugin_api::tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ToolOutput::ok("slept"))
            }
            _ => act(&call),
        }
    }
}

plugin_api::export_plugin! {
    id: "crashy",
    tool: Crashy,
}
