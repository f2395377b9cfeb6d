//! Shared by the examples: telemetry set-up (OTLP traces and metrics when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, honouring `OTEL_EXPORTER_OTLP_PROTOCOL` and
//! `OTEL_SERVICE_NAME`) and the one-line-per-message output every example prints.
#![allow(dead_code)]

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "sqs")]
pub mod sqs;

use std::error::Error;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::{global, Context};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracerProvider, TracerProviderBuilder};
use opentelemetry_sdk::Resource;

/// Flushes and shuts the providers down when dropped: spans lost at exit are the most common
/// complaint about tracing examples. Keep it alive until the end of `main` (`let _telemetry =`,
/// never `let _ =`, which drops it at once).
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Telemetry {
    /// The tracer provider installed as the global one.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // `shutdown` flushes too; flushing first keeps the spans when a shutdown step fails.
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// The OTLP protocol for `signal` (`TRACES`, `METRICS`), or `None` when neither
/// `OTEL_EXPORTER_OTLP_ENDPOINT` nor `OTEL_EXPORTER_OTLP_<signal>_ENDPOINT` is set. The protocol
/// comes from `OTEL_EXPORTER_OTLP_<signal>_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else
/// `grpc`. The exporters read the endpoints themselves.
fn otlp(signal: &str) -> Option<Protocol> {
    env("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))?;
    let protocol = env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".into());
    Some(match protocol.as_str() {
        "grpc" => Protocol::Grpc,
        "http/protobuf" => Protocol::HttpProtobuf,
        other => {
            eprintln!(
                "OTLP protocol {other:?} is not built into the examples: using http/protobuf"
            );
            Protocol::HttpProtobuf
        }
    })
}

/// Installs the global tracer and meter providers and the W3C propagators. `default_service` is
/// the service name unless `OTEL_SERVICE_NAME` says otherwise. Spans and metrics go over OTLP
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the signal's own `..._TRACES_ENDPOINT`,
/// `..._METRICS_ENDPOINT`) is set, with the protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`:
/// `grpc`, the default, or `http/protobuf`; otherwise they stay in the process.
pub fn init(default_service: &str) -> Result<Telemetry, Box<dyn Error>> {
    init_with(default_service, |builder| builder)
}

/// [`init`], letting the caller add span processors of its own (the demo keeps spans in memory
/// to print them, and exports them over OTLP as well when asked to).
pub fn init_with(
    default_service: &str,
    customise: impl FnOnce(TracerProviderBuilder) -> TracerProviderBuilder,
) -> Result<Telemetry, Box<dyn Error>> {
    global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
        vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ],
    ));
    // The SDK's resource detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES too;
    // this only supplies the default name.
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.into());
    let resource = Resource::builder().with_service_name(service).build();
    let mut tracer = customise(SdkTracerProvider::builder().with_resource(resource.clone()));
    let mut meter = SdkMeterProvider::builder().with_resource(resource);
    match otlp("TRACES") {
        Some(Protocol::Grpc) => {
            tracer = tracer.with_batch_exporter(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()?,
            );
        }
        Some(Protocol::HttpProtobuf) => {
            tracer = tracer.with_batch_exporter(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()?,
            );
        }
        None => {}
    }
    match otlp("METRICS") {
        Some(Protocol::Grpc) => {
            meter = meter.with_periodic_exporter(
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()?,
            );
        }
        Some(Protocol::HttpProtobuf) => {
            meter = meter.with_periodic_exporter(
                opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .build()?,
            );
        }
        None => {}
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
