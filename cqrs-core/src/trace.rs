//! One trace from a publish to the last handler, across processes.
//!
//! With the feature `opentelemetry`, and a [`tracing-opentelemetry`] layer
//! installed by the application, a publish stores the W3C
//! [`traceparent`](https://www.w3c.org/TR/trace-context/#traceparent-header)
//! of its span with the command ([`CommandRecord::traceparent`], the row's
//! `traceparent` field, which the reference framework ignores). The process
//! that applies the command — an in-process worker, the DynamoDB stream
//! consumer or the Lambda, on another host, minutes later — continues that
//! trace: its `settle` or `process` span (and every span under it, each
//! handler's) is a child of the publish's `command` span.
//!
//! Without the feature, or without the layer, nothing is stored and these
//! functions do nothing: the row is as before, and a publish pays nothing.
//!
//! The spans the framework opens (all at level `INFO`) and their fields:
//!
//! | Span | Where | Fields |
//! |---|---|---|
//! | `command` | a publish | `mode` (`sync`, `async`), `tenant`, `pk`, `sk`, `version` |
//! | `process` | the pipeline, for one command | `tenant`, `pk`, `sk`, `version`, `outcome` |
//! | `handler` | one run of a data-sync handler (projections are handlers) | `name`, `attempt`, `outcome` |
//! | `settle` | a stored command brought to a final state (the DynamoDB stream consumer, the Lambda, [`Engine::settle`](crate::Engine::settle)) | `tenant`, `pk`, `sk`, `version`, `found` (the row's status), `outcome` |
//!
//! No span carries attribute values: they may hold personal data.
//!
//! [`tracing-opentelemetry`]: https://docs.rs/tracing-opentelemetry
//! [`CommandRecord::traceparent`]: crate::CommandRecord::traceparent

use smol_str::SmolStr;

/// The W3C `traceparent` of the current span, when an OpenTelemetry layer
/// traces it (`None` without the feature `opentelemetry`, without the layer,
/// or outside any span). What a publish stores with its command.
pub fn current_traceparent() -> Option<SmolStr> {
    #[cfg(feature = "opentelemetry")]
    {
        otel::current_traceparent()
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        None
    }
}

/// Makes `span`, not yet entered, continue the trace of `traceparent` (a
/// W3C `traceparent` value, as [`current_traceparent`] gives): its parent
/// becomes that remote span. Nothing happens when `traceparent` is `None`
/// or malformed, when the current span is already in that trace (its own
/// parent is then the right one), or without the feature `opentelemetry`.
///
/// The framework calls it for the spans that apply a command; call it for
/// the span of an incoming request that carries a `traceparent` header.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "opentelemetry")]
    otel::continue_trace(span, traceparent);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, traceparent);
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry::Context;
    use smol_str::{format_smolstr, SmolStr};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub(super) fn current_traceparent() -> Option<SmolStr> {
        let span = tracing::Span::current();
        if span.is_none() {
            return None;
        }
        let context = span.context();
        let current = context.span();
        let current = current.span_context();
        current.is_valid().then(|| format_traceparent(current))
    }

    pub(super) fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
        let Some(remote) = traceparent.and_then(parse_traceparent) else {
            return;
        };
        if span.is_disabled() {
            return;
        }
        let current = tracing::Span::current();
        if !current.is_none() && current.context().span().span_context().trace_id() == remote.trace_id() {
            return;
        }
        // Only fails when no OpenTelemetry layer is installed (or the span
        // is filtered out by it): there is then no trace to continue.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }

    /// `00-{trace id}-{span id}-{flags}`, lowercase hex.
    pub(super) fn format_traceparent(context: &SpanContext) -> SmolStr {
        format_smolstr!(
            "00-{:032x}-{:016x}-{:02x}",
            u128::from_be_bytes(context.trace_id().to_bytes()),
            u64::from_be_bytes(context.span_id().to_bytes()),
            context.trace_flags().to_u8()
        )
    }

    /// A `traceparent` of version `00` (or a later version, read as `00`
    /// reads it, as the specification asks), `None` when malformed or when
    /// its ids are all zeros.
    pub(super) fn parse_traceparent(value: &str) -> Option<SpanContext> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let exact = parts.next().is_none();
        if version.len() != 2 || !is_hex(version) || version == "ff" || (version == "00" && !exact) {
            return None;
        }
        if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if ![trace_id, span_id, flags].iter().all(|part| is_hex(part)) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        context.is_valid().then_some(context)
    }

    /// Lowercase hex digits only (the specification refuses uppercase).
    fn is_hex(text: &str) -> bool {
        text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        #[test]
        fn the_specifications_example_round_trips() {
            let context = parse_traceparent(EXAMPLE).expect("valid");
            assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
            assert!(context.is_sampled());
            assert!(context.is_remote());
            assert_eq!(format_traceparent(&context), EXAMPLE);
        }

        #[test]
        fn small_ids_keep_their_leading_zeros() {
            let context = SpanContext::new(
                TraceId::from(1u128),
                SpanId::from(2u64),
                TraceFlags::default(),
                false,
                TraceState::default(),
            );
            assert_eq!(
                format_traceparent(&context),
                "00-00000000000000000000000000000001-0000000000000002-00"
            );
        }

        #[test]
        fn malformed_values_are_ignored() {
            for bad in [
                "",
                "00",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            ] {
                assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
            }
        }

        #[test]
        fn a_later_version_is_read_as_version_00() {
            let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
            let context = parse_traceparent(later).expect("readable");
            assert_eq!(format_traceparent(&context), EXAMPLE);
        }
    }
}
