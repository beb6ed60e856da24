//! Plugin logs reach the host's `tracing`, tagged with the plugin id.
//!
//! In its own test binary: tracing caches callsite interest per process, and a scoped
//! subscriber racing with other tests' threads can miss events.

use e2e::{artifacts, panicky};
use host::Registry;
use plugin_api::wire::{Message, PromptRequest};

fn request(text: &str) -> PromptRequest {
    PromptRequest::new(vec![Message::user(text)])
}

#[test]
fn plugin_logs_reach_the_host_tracing() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let path = panicky()
        .extra("[config]\non_word = true\n")
        .write(dir.path(), "p.toml");
    tracing::subscriber::with_default(subscriber, || {
        let mut registry = Registry::new();
        registry.add_manifest(&path, &a.options()).unwrap();
        let d = registry.get("panicky").unwrap().new_driver(None).unwrap();
        d.prompt(&request("hello")).unwrap();
    });
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("panicky got a sync prompt"), "{text}");
    assert!(
        text.contains("plugin=\"panicky\"") || text.contains("plugin=panicky"),
        "{text}"
    );
}
