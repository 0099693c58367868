//! W3C trace context over NATS: one trace per execution, across gateway, server and worker.
//!
//! Every execution's trace id is derived from its id, so each process can join the execution's
//! trace even when a message arrives without a `traceparent` (a command the relay re-published
//! after a restart, say). A message's `traceparent` header, when present, names the span that
//! sent it, so spans nest: gateway submit → server request → worker step → server report.
//! Without an OTLP exporter (see `noetl_service`) spans carry no trace context and nothing is
//! added to messages.

use async_nats::HeaderMap;
use noetl_contract::ExecutionId;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Low half of every execution trace id ("noetl", then a version byte): never all zeros.
const TRACE_ID_LOW: u128 = 0x6e6f_6574_6c00_0001;

/// The trace id of an execution's trace.
pub fn trace_id(id: ExecutionId) -> TraceId {
    TraceId::from((u128::from(id.get().unsigned_abs()) << 64) | TRACE_ID_LOW)
}

/// The execution's trace, as a remote parent: the root every span of the execution hangs from
/// when its message names no sender.
fn execution_root(id: ExecutionId) -> Context {
    // Ids are below 2^63, so setting the top bit gives a span id that is never zero.
    let root = SpanContext::new(
        trace_id(id),
        SpanId::from(id.get().unsigned_abs() | (1 << 63)),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(root)
}

/// Makes `span` part of execution `id`'s trace: a child of the sender `headers` name when they
/// carry a `traceparent` of that trace, else of the execution's root.
pub fn join(span: &tracing::Span, id: ExecutionId, headers: Option<&HeaderMap>) {
    let sender = headers
        .map(|headers| TraceContextPropagator::new().extract(&Headers(headers)))
        .filter(|cx| cx.span().span_context().trace_id() == trace_id(id));
    // Without an OpenTelemetry layer this is a no-op.
    let _ = span.set_parent(sender.unwrap_or_else(|| execution_root(id)));
}

/// The `traceparent` of the current span, for a message about to be sent; empty when the
/// current span is not traced.
pub fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(&mut headers));
    }
    headers
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_execution_has_its_own_valid_trace_id() {
        let a = ExecutionId::new(0).expect("valid id");
        let b = ExecutionId::new(1 << 40).expect("valid id");
        assert_ne!(trace_id(a), TraceId::INVALID);
        assert_ne!(trace_id(a), trace_id(b));
        let root = execution_root(b);
        assert!(root.span().span_context().is_valid());
        assert_eq!(root.span().span_context().trace_id(), trace_id(b));
    }

    #[test]
    fn a_traceparent_survives_nats_headers() {
        let id = ExecutionId::new(42).expect("valid id");
        let mut headers = HeaderMap::new();
        TraceContextPropagator::new()
            .inject_context(&execution_root(id), &mut HeadersMut(&mut headers));
        let extracted = TraceContextPropagator::new().extract(&Headers(&headers));
        assert_eq!(extracted.span().span_context().trace_id(), trace_id(id));
        assert_eq!(
            extracted.span().span_context().span_id(),
            execution_root(id).span().span_context().span_id()
        );
    }
}
