//! `grip mcp serve`: chosen tool plugins' activities as MCP tools, over stdio or streamable
//! HTTP, for any MCP client (Claude Desktop, editors, agent SDKs).
//!
//! Every call goes through the task loop's own dispatch ([`ToolSet::call_async`]): the same
//! function names (`<Tool>_<activity>`), the same schema check before a tool sees the
//! arguments, the same sync/async bridging, and a tool's failure is an MCP tool error (a result
//! with `isError`), never a protocol error. A client's `notifications/cancelled` drops the call.

use std::net::SocketAddr;
use std::sync::Arc;

use plugin_api::wire::{ToolCall, ToolOutput, WIRE_VERSION};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt};

use super::catalog;
use crate::plugin::ToolHandle;
use crate::task::tools::ToolSet;

/// The MCP server over a set of tools. Cheap to clone (one per HTTP session).
#[derive(Clone)]
pub struct ToolServer {
    tools: Arc<ToolSet>,
    listed: Arc<Vec<Tool>>,
}

impl std::fmt::Debug for ToolServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolServer")
            .field("tools", &self.listed.len())
            .finish_non_exhaustive()
    }
}

impl ToolServer {
    /// A server offering every activity of `tools`.
    ///
    /// # Errors
    /// When two tools offer the same function name.
    pub fn new(tools: &[ToolHandle]) -> Result<Self, String> {
        let set = ToolSet::new(tools).map_err(|e| e.to_string())?;
        let listed = set
            .specs()
            .iter()
            .map(|f| {
                catalog::to_mcp_tool(
                    &f.name,
                    &plugin_api::wire::Activity {
                        name: f.name.clone(),
                        description: f.description.clone(),
                        parameters: f.parameters.clone(),
                    },
                )
            })
            .collect();
        Ok(Self {
            tools: Arc::new(set),
            listed: Arc::new(listed),
        })
    }

    /// The MCP tools on offer.
    pub fn tools(&self) -> &[Tool] {
        &self.listed
    }

    /// Serves one client on stdin/stdout until it closes them.
    ///
    /// # Errors
    /// When the session cannot start.
    pub async fn serve_stdio(self) -> anyhow::Result<()> {
        // A plugin that prints to stdout must not corrupt the protocol: it speaks on a copy of
        // stdout, and fd 1 now goes to stderr (as in a process-isolated plugin's child).
        let protocol = crate::isolation::take_stdout().map_err(anyhow::Error::msg)?;
        let out = tokio::fs::File::from_std(protocol);
        let running = self.serve((tokio::io::stdin(), out)).await?;
        running.waiting().await?;
        Ok(())
    }

    /// Serves streamable HTTP at `/mcp` on `listener` until `shutdown` resolves. `token`: the
    /// bearer token every request must carry. rmcp checks `Host` (loopback names only, against
    /// DNS rebinding) and here `Origin` too (a browser page is refused).
    ///
    /// # Errors
    /// When serving fails.
    pub async fn serve_http(
        self,
        listener: tokio::net::TcpListener,
        token: Option<String>,
        allowed_hosts: Vec<String>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut config = StreamableHttpServerConfig::default().enforce_origin_validation();
        // Added to rmcp's loopback names, not instead of them.
        config.allowed_hosts.extend(allowed_hosts);
        let service = StreamableHttpService::new(
            move || Ok(self.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let token = token.map(Arc::new);
        let app =
            axum::Router::new()
                .nest_service("/mcp", service)
                .layer(axum::middleware::from_fn(move |req, next| {
                    bearer(token.clone(), req, next)
                }));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// 401 unless the request carries the token (when there is one).
async fn bearer(
    token: Option<Arc<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(token) = token {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            crate::daemon::guard::constant_time_eq(g.trim().as_bytes(), token.as_bytes())
        });
        if !ok {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            )
                .into_response();
        }
    }
    next.run(req).await
}

impl ServerHandler for ToolServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("grip", env!("CARGO_PKG_VERSION")))
            .with_instructions("Tools of grip plugins, named <Tool>_<activity>.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.listed.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = ToolCall {
            id: format!("mcp-{}", context.id),
            name: request.name.into_owned(),
            arguments: request.arguments.map_or(
                serde_json::Value::Object(Default::default()),
                serde_json::Value::Object,
            ),
        };
        let message = tokio::select! {
            m = self.tools.call_async(&call) => m,
            () = context.ct.cancelled() => {
                return Ok(CallToolResult::error(vec![ContentBlock::text("cancelled by the client")]).into());
            }
        };
        Ok(catalog::to_mcp_result(ToolOutput {
            schema_version: WIRE_VERSION,
            content: message.content,
            is_error: message.is_error,
            structured: message.structured,
        })
        .into())
    }
}

/// Whether `addr` is a loopback address (where no token is needed).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
