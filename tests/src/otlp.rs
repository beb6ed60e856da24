//! A real OTLP receiver on 127.0.0.1: HTTP/protobuf (`POST /v1/traces`, `/v1/metrics`) and gRPC
//! (the collector's TraceService and MetricsService), decoding with the official protobuf
//! definitions (`opentelemetry-proto`). It keeps every span and metric data point it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use prost::Message as _;
use serde_json::{Value, json};

/// One span as received.
#[derive(Debug, Clone)]
pub struct Span {
    /// `http` or `grpc`.
    pub via: &'static str,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// The protobuf's SpanKind number (1 internal, 3 client).
    pub kind: i32,
    pub attributes: BTreeMap<String, Value>,
    /// The protobuf's status code (2 error).
    pub status_code: i32,
    pub status_message: String,
    /// The resource's `service.name`.
    pub service: String,
}

impl Span {
    /// An attribute, or `Value::Null`.
    pub fn attr(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }
}

/// One histogram data point as received.
#[derive(Debug, Clone)]
pub struct Point {
    pub via: &'static str,
    pub metric: String,
    pub unit: String,
    pub attributes: BTreeMap<String, Value>,
    pub count: u64,
    pub sum: f64,
}

#[derive(Default)]
struct Inner {
    spans: Vec<Span>,
    points: Vec<Point>,
}

/// The receiver: both endpoints, one store.
#[derive(Clone, Default)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    /// `http://127.0.0.1:<port>`: the base of `/v1/traces` and `/v1/metrics`.
    pub http: String,
    /// `http://127.0.0.1:<port>` of the gRPC services.
    pub grpc: String,
}

impl Receiver {
    /// Starts both endpoints, each on a port of its own.
    pub fn start() -> Self {
        let mut r = Receiver::default();
        let app = Router::new()
            .route("/v1/traces", post(http_traces))
            .route("/v1/metrics", post(http_metrics))
            .with_state(r.clone());
        r.http = format!("http://{}", crate::serve_router(app));
        r.grpc = format!("http://{}", serve_grpc(r.clone()));
        r
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.inner.lock().unwrap().spans.clone()
    }

    /// Every data point received so far.
    pub fn points(&self) -> Vec<Point> {
        self.inner.lock().unwrap().points.clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        let mut i = self.inner.lock().unwrap();
        i.spans.clear();
        i.points.clear();
    }

    /// Waits (up to 20 s) until `ready` holds for the spans received, and returns them.
    pub fn wait_spans(&self, what: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if ready(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver did not get {what}; it has: {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.name, s.via, &s.trace_id))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn add_spans(&self, via: &'static str, req: ExportTraceServiceRequest) {
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .and_then(|a| {
                    a.get("service.name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let status = s.status.clone().unwrap_or_default();
                    out.push(Span {
                        via,
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        kind: s.kind,
                        attributes: attributes(&s.attributes),
                        status_code: status.code,
                        status_message: status.message,
                        service: service.clone(),
                    });
                }
            }
        }
        self.inner.lock().unwrap().spans.extend(out);
    }

    fn add_metrics(&self, via: &'static str, req: ExportMetricsServiceRequest) {
        let mut out = Vec::new();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    if let Some(metric::Data::Histogram(h)) = m.data {
                        for p in h.data_points {
                            out.push(Point {
                                via,
                                metric: m.name.clone(),
                                unit: m.unit.clone(),
                                attributes: attributes(&p.attributes),
                                count: p.count,
                                sum: p.sum.unwrap_or_default(),
                            });
                        }
                    }
                }
            }
        }
        self.inner.lock().unwrap().points.extend(out);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any(kv.value.as_ref())))
        .collect()
}

fn any(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any(Some(v))).collect())
        }
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

async fn http_traces(State(r): State<Receiver>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
    r.add_spans("http", req);
    ExportTraceServiceResponse::default().encode_to_vec()
}

async fn http_metrics(State(r): State<Receiver>, body: Bytes) -> Vec<u8> {
    let req = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
    r.add_metrics("http", req);
    ExportMetricsServiceResponse::default().encode_to_vec()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add_spans("grpc", request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.add_metrics("grpc", request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The gRPC services on their own thread and runtime, like [`crate::serve_router`].
fn serve_grpc(r: Receiver) -> std::net::SocketAddr {
    crate::serve_listener(|listener| async move {
        let incoming = futures::stream::unfold(listener, |l| async move {
            let accepted = l.accept().await.map(|(s, _)| s);
            Some((accepted, l))
        });
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()))
            .add_service(MetricsServiceServer::new(r))
            .serve_with_incoming(incoming)
            .await
            .expect("serve grpc");
    })
}
