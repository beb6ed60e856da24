//! Where a driver's requests go: through the host's HTTP service (ABI generation 2: the
//! request runs on the host's runtime and pool, no hand-off to the plugin's own runtime) or,
//! when no host offers one (a driver used outside a host, in its own unit tests), through a
//! reqwest client of the plugin's own. Both give the same [`Response`] and the same errors.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use plugin_api::sdk::http as host_http;
use plugin_api::{ErrorKind, PluginError};
use reqwest::StatusCode;

pub use plugin_api::sdk::http::Request;

/// How requests are sent.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The host's HTTP service.
    Host,
    /// A client of the plugin's own (see [`crate::client`]).
    Own(reqwest::Client),
}

/// A response: status and headers, and the body still to read.
pub struct Response {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Host(host_http::Body),
    Own(reqwest::Response),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A body as chunks; errors are classified (`Timeout`, or `Upstream` for a dropped connection).
pub type Chunks = BoxStream<'static, Result<Vec<u8>, PluginError>>;

impl Transport {
    /// The host's service when the host offers one and `config` does not ask for the plugin's
    /// own client, else a client built for `config`.
    ///
    /// # Errors
    /// A client that cannot be built.
    pub fn for_config(config: &crate::HttpConfig) -> Result<Self, PluginError> {
        if config.client == crate::ClientChoice::Host && host_http::available() {
            Ok(Self::Host)
        } else {
            crate::client(config).map(Self::Own)
        }
    }

    /// Sends `request`; resolves with the response head. `url` names the upstream in errors.
    ///
    /// # Errors
    /// Transport failures and timeouts before a response, retryable.
    pub async fn send(&self, request: Request, url: &str) -> Result<Response, PluginError> {
        match self {
            Transport::Host => {
                let resp = host_http::send(request)
                    .await
                    .map_err(|e| host_error(e, url))?;
                let status = StatusCode::from_u16(resp.head.status)
                    .map_err(|_| PluginError::upstream(format!("invalid status from {url}")))?;
                Ok(Response {
                    status,
                    headers: resp.head.headers.clone(),
                    body: Body::Host(resp.into_body()),
                })
            }
            Transport::Own(client) => {
                let resp = own_request(client, request)?
                    .send()
                    .await
                    .map_err(|e| crate::send_error(&e, url))?;
                let headers = resp
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                Ok(Response {
                    status: resp.status(),
                    headers,
                    body: Body::Own(resp),
                })
            }
        }
    }
}

fn own_request(
    client: &reqwest::Client,
    request: Request,
) -> Result<reqwest::RequestBuilder, PluginError> {
    let head = request.head;
    let method = reqwest::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| PluginError::internal(format!("invalid HTTP method {:?}", head.method)))?;
    let mut rb = client.request(method, &head.url).body(request.body);
    for (k, v) in &head.headers {
        rb = rb.header(k, v);
    }
    if let Some(ms) = head.timeout_ms {
        rb = rb.timeout(Duration::from_millis(ms));
    }
    Ok(rb)
}

/// The host service's error (`what: detail`, or a timeout) in the words of [`crate::send_error`].
fn host_error(e: PluginError, url: &str) -> PluginError {
    if e.kind == ErrorKind::Timeout {
        return PluginError::new(ErrorKind::Timeout, format!("request to {url} timed out"))
            .retryable();
    }
    let retryable = e.retryable;
    let mut out = match e.message.split_once(": ") {
        Some((what, detail)) => PluginError::new(e.kind, format!("{what} ({url}): {detail}")),
        None => PluginError::new(e.kind, format!("{} ({url})", e.message)),
    };
    out.retryable = retryable;
    out
}

impl Response {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The whole body as text (invalid UTF-8 replaced).
    ///
    /// # Errors
    /// The failure that ended the body early.
    pub async fn text(self, url: &str) -> Result<String, PluginError> {
        match self.body {
            Body::Own(resp) => resp.text().await.map_err(|e| crate::send_error(&e, url)),
            Body::Host(body) => {
                let mut body = body;
                let mut out = Vec::new();
                while let Some(chunk) = body.next().await {
                    out.extend_from_slice(&chunk.map_err(|e| host_error(e, url))?);
                }
                Ok(String::from_utf8(out)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
            }
        }
    }

    /// The body, chunk by chunk.
    pub fn chunks(self) -> Chunks {
        match self.body {
            Body::Host(body) => body.boxed(),
            Body::Own(resp) => resp
                .bytes_stream()
                .map(|c| c.map(|b| b.to_vec()).map_err(|e| body_error(&e)))
                .boxed(),
        }
    }
}

/// A reqwest error while a body was read: a timeout (the whole-request timeout firing), wherever
/// in its source chain it is, or a dropped connection.
fn body_error(e: &reqwest::Error) -> PluginError {
    let mut timed_out = e.is_timeout();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        timed_out |= s
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || s.to_string().contains("timed out");
        source = s.source();
    }
    if timed_out {
        PluginError::new(ErrorKind::Timeout, "timed out").retryable()
    } else {
        PluginError::upstream(e.to_string()).retryable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DefaultClassify, Endpoint, HttpConfig, read_json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One canned HTTP answer per connection, on 127.0.0.1.
    async fn canned(body: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    // Outside a host (as here) no HTTP service is offered: requests go through the plugin's own
    // client, with the same errors.
    #[tokio::test]
    async fn with_no_host_a_driver_uses_a_client_of_its_own() {
        let base = canned(r#"{"ok": true}"#).await;
        let ep = Endpoint::new(&base, "/v1/x", &HttpConfig::default(), "NO_SUCH_KEY_VAR").unwrap();
        assert!(matches!(ep.transport, Transport::Own(_)));
        let resp = ep
            .send(|| ep.post(&serde_json::json!({"q": 1})), &DefaultClassify)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.header("Content-Type"), Some("application/json"));
        let v: serde_json::Value = read_json(resp, &ep.url).await.unwrap();
        assert_eq!(v["ok"], true);

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let mut http = HttpConfig::default();
        http.retry.max_retries = 0;
        let ep = Endpoint::new(&dead, "/v1/x", &http, "NO_SUCH_KEY_VAR").unwrap();
        let e = ep
            .send(|| ep.post(&serde_json::json!({})), &DefaultClassify)
            .await
            .unwrap_err();
        assert!(e.message.contains("cannot connect (") && e.retryable, "{e}");
    }
}
