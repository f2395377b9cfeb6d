//! Shared by the examples: telemetry set-up (OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and
//! the one-line-per-message output every example prints.
#![allow(dead_code)]

use std::error::Error;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::{global, Context};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// Flushes and shuts the providers down when dropped: spans lost at exit are the most common
/// complaint about tracing examples.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

fn otlp_enabled() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

fn grpc() -> bool {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".into());
    protocol == "grpc"
}

/// Installs the global tracer and meter providers and the W3C propagators. `default_service` is
/// the service name unless `OTEL_SERVICE_NAME` says otherwise. Spans and metrics go over OTLP
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`:
/// `grpc`, the default, or `http/protobuf`); otherwise they stay in the process.
pub fn init(default_service: &str) -> Result<Telemetry, Box<dyn Error>> {
    global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
        vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ],
    ));
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| default_service.into());
    let resource = Resource::builder().with_service_name(service).build();
    let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut meter = SdkMeterProvider::builder().with_resource(resource);
    if otlp_enabled() {
        if grpc() {
            tracer = tracer.with_batch_exporter(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()?,
            );
            meter = meter.with_periodic_exporter(
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()?,
            );
        } else {
            tracer = tracer.with_batch_exporter(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()?,
            );
            meter = meter.with_periodic_exporter(
                opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .build()?,
            );
        }
    }
    let tracer_provider = tracer.build();
    let meter_provider = meter.build();
    global::set_tracer_provider(tracer_provider.clone());
    global::set_meter_provider(meter_provider.clone());
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
    })
}

/// `sent <destination> trace_id=<32 hex> span_id=<16 hex>`
pub fn print_sent(destination: &str, span: &SpanContext) {
    println!(
        "sent {destination} trace_id={} span_id={}",
        span.trace_id(),
        span.span_id()
    );
}

/// `processed <destination> trace_id=<32 hex> span_id=<16 hex> link=<32 hex>-<16 hex>`, for the
/// span current in `cx` (the process span, inside a handler) and the producer span it links to.
pub fn print_processed(destination: &str, cx: &Context, link: Option<&SpanContext>) {
    let span = cx.span();
    let sc = span.span_context();
    match link {
        Some(link) => println!(
            "processed {destination} trace_id={} span_id={} link={}-{}",
            sc.trace_id(),
            sc.span_id(),
            link.trace_id(),
            link.span_id()
        ),
        None => println!(
            "processed {destination} trace_id={} span_id={}",
            sc.trace_id(),
            sc.span_id()
        ),
    }
}
