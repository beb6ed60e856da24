//! The checks every request passes before a handler sees it: who may talk to the daemon at all.
//!
//! A web page in the user's browser can reach a daemon on loopback. It can send "simple"
//! requests (`text/plain`, form or multipart bodies) without a CORS preflight, and through DNS
//! rebinding (its own host name resolving to 127.0.0.1) it can even read the replies. So:
//!
//! - **Host**: on a loopback bind (or whenever `server.allowed_hosts` is set), the `Host`
//!   header must name a loopback address, `localhost`, or a configured name; else 403.
//! - **Origin**: browsers send it on cross-origin requests (and on every POST); a request with
//!   one is refused (403) unless it is in `server.allowed_origins`, and only those origins get
//!   CORS headers (preflights included).
//! - **Content-Type**: a POST must be `application/json` (415 otherwise), which a page cannot
//!   send cross-origin without a preflight that the Origin check refuses.
//!
//! - **Bearer token**: when `server.auth_token_env` is set, on every route but `/healthz`
//!   (401 otherwise).
//!
//! One middleware does all of it: each layer of axum middleware costs a boxed service and a
//! boxed future per request.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, api_error};

/// What the guard lets through, from the server config.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    /// Enforce the Host check (loopback bind, or names configured).
    pub check_host: bool,
    /// Host names accepted besides loopback addresses and `localhost` (lower case, no port).
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) that may call the daemon from a browser.
    pub allowed_origins: Vec<String>,
}

impl GuardPolicy {
    /// The policy for a daemon listening on a loopback address or not.
    pub fn new(loopback: bool, allowed_hosts: &[String], allowed_origins: &[String]) -> Self {
        Self {
            check_host: loopback || !allowed_hosts.is_empty(),
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a `Host` header value is acceptable.
    pub fn host_ok(&self, host: &str) -> bool {
        let host = host.trim();
        let name = match host.strip_prefix('[') {
            // [::1]:8080
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            },
        };
        if name.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn origin_ok(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.allowed_origins.contains(&origin)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 401 for a request without the right bearer token, if it lacks it.
fn unauthenticated(token: &str, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let message = match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => return None,
        Some(_) => "wrong bearer token",
        None => "missing `Authorization: Bearer <token>` header",
    };
    let mut r = api_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

fn cors_headers(origin: &HeaderValue, out: &mut HeaderMap) {
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    out.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-grip-path, x-grip-task-id, retry-after"),
    );
}

/// The middleware: Host, Origin (with CORS for allowed origins), bearer token, Content-Type.
pub async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let policy = &state.guard;
    if policy.check_host {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if let Some(h) = host
            && !policy.host_ok(h)
        {
            return api_error(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "Host `{h}` is not served here (loopback names only; the operator can add names with server.allowed_hosts)"
                ),
            );
        }
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    if let Some(o) = &origin {
        let text = o.to_str().unwrap_or("?");
        if !policy.origin_ok(text) {
            return api_error(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "requests from the web origin `{text}` are refused (the operator can allow it with server.allowed_origins)"
                ),
            );
        }
        if req.method() == Method::OPTIONS {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            cors_headers(o, h);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, traceparent"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            return r;
        }
    }
    if let Some(token) = &state.token
        && req.uri().path() != "/healthz"
        && let Some(refused) = unauthenticated(token, req.headers())
    {
        return refused;
    }
    if req.method() == Method::POST && !is_json(req.headers()) {
        return api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with `Content-Type: application/json`",
        );
    }
    let mut r = next.run(req).await;
    if let Some(o) = &origin {
        cors_headers(o, r.headers_mut());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_configured_names_only() {
        let p = GuardPolicy::new(true, &["grip.internal".into()], &[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:1",
            "LOCALHOST",
            "[::1]:8080",
            "127.5.6.7",
            "grip.internal:80",
        ] {
            assert!(p.host_ok(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "[::2]:80",
            "",
        ] {
            assert!(!p.host_ok(bad), "{bad}");
        }
    }

    #[test]
    fn origins_match_exactly() {
        let p = GuardPolicy::new(true, &[], &["https://app.example/".into()]);
        assert!(p.origin_ok("https://app.example"));
        assert!(p.origin_ok("HTTPS://APP.EXAMPLE"));
        assert!(!p.origin_ok("https://app.example.evil"));
        assert!(!p.origin_ok("null"));
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/jsonp", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_json(&h), ok, "{v}");
        }
    }
}
