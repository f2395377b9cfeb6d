//! The consume driver's own cost per message, without a broker: `Consumer::run` over an
//! in-memory source against calling the `ConsumerLayer`-wrapped handler in a plain loop (what a
//! hand-written consume loop does), with tracing off and unsampled. Prints ns per message,
//! medians of rounds.
//!
//! `cargo bench -p tracelink-core --bench consume` (`TRACELINK_BENCH_MESSAGES`, default 200 000;
//! `TRACELINK_BENCH_ROUNDS`, default 7).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::time::Instant;

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_core::{
    Consumer, ConsumerLayer, Destination, ErrorType, IncomingMessage, Instrumentation,
    MessagingSystem, Received, Settlement, Settler, Source,
};

struct Msg;

impl IncomingMessage for Msg {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }
    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        let none: std::collections::HashMap<String, String> = Default::default();
        f(&tracelink_core::carrier::MapExtractor(&none))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl ErrorType for Never {
    fn error_type(&self) -> Cow<'static, str> {
        Cow::Borrowed("never")
    }
}

/// `n` messages, one per receive, then the end.
struct Counted(usize);

impl Source for Counted {
    type Message = Msg;
    type Error = Never;
    type Settler = NoSettle;

    fn settler(&self) -> NoSettle {
        NoSettle
    }

    async fn receive(mut self, _max: usize) -> (Self, Result<Received<Msg>, Never>) {
        if self.0 == 0 {
            return (self, Ok(Received::Closed));
        }
        self.0 -= 1;
        (self, Ok(Received::One(Msg)))
    }
}

struct NoSettle;

impl Settler<Msg> for NoSettle {
    type Receipt = ();
    type Error = Never;

    fn receipt(&self, _message: &Msg) {}

    fn operation(&self, _settlement: Settlement) -> Option<&'static str> {
        None
    }

    fn settle(
        &self,
        _receipt: (),
        _settlement: Settlement,
    ) -> impl Future<Output = Result<(), Never>> + Send + 'static + use<> {
        std::future::ready(Ok(()))
    }
}

fn handler() -> impl Service<Msg, Response = (), Error = Infallible, Future: Send> + Clone {
    service_fn(|_m: Msg| async { Ok::<_, Infallible>(()) })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let messages: usize = std::env::var("TRACELINK_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rounds: usize = std::env::var("TRACELINK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let system = || MessagingSystem::new("bench");
    let off = Instrumentation::builder(system())
        .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
        .with_propagator(TextMapCompositePropagator::new(vec![]))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .build();
    let unsampled = Instrumentation::builder(system())
        .with_tracer_provider(&provider)
        .with_propagator(TextMapCompositePropagator::new(vec![]))
        .build();
    for (name, instr) in [("tracing off", &off), ("unsampled", &unsampled)] {
        let mut plain = Vec::new();
        let mut driver = Vec::new();
        for _ in 0..rounds {
            runtime.block_on(async {
                let mut service = ConsumerLayer::from(instr.clone()).layer(handler());
                let started = Instant::now();
                for _ in 0..messages {
                    service.ready().await.unwrap().call(Msg).await.unwrap();
                }
                plain.push(started.elapsed().as_nanos() as f64 / messages as f64);

                let started = Instant::now();
                Consumer::<Counted>::new(Counted(messages), instr.clone())
                    .run(handler(), std::future::pending::<()>())
                    .await
                    .unwrap();
                driver.push(started.elapsed().as_nanos() as f64 / messages as f64);
            });
        }
        let (plain, driver) = (median(plain), median(driver));
        println!(
            "{name:<12} ns/message: ConsumerLayer in a plain loop {plain:.0}, Consumer::run {driver:.0} (driver's own {:.0})",
            driver - plain
        );
    }
}
