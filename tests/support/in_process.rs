//! Shared by `tests/exporter_faults.rs` and `benches/memory.rs` (included with `#[path]`): an
//! in-process message for the layers and the process's own memory figures.

use std::collections::HashMap;
use std::net::SocketAddr;

use opentelemetry::propagation::{Extractor, Injector};
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceBuilder};
use tracelink::core::carrier::{MapExtractor, MapInjector};
use tracelink::core::{IncomingMessage, OutgoingMessage, PublishResponse};
use tracelink::{Destination, Instrumentation, ProducerLayer};

/// An application message on the queue `orders`: its number in the run, headers and a 64-byte
/// body.
#[derive(Debug)]
pub struct Message {
    pub id: usize,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn new(id: usize) -> Self {
        Self {
            id,
            headers: HashMap::new(),
            body: vec![b'x'; 64],
        }
    }
}

impl OutgoingMessage for Message {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut MapInjector(&mut self.headers))
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
}

impl IncomingMessage for Message {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }
    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        f(&MapExtractor(&self.headers))
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
}

/// The publish response of the in-process channel.
pub struct Queued;
impl PublishResponse for Queued {}

/// The traced producer side: `ProducerLayer` around a service that queues each message on `tx`
/// for the consumer side (an error once that side is gone).
pub fn queueing_producer(
    instrumentation: Instrumentation,
    tx: mpsc::Sender<Message>,
) -> impl Service<Message, Response = Queued, Error = std::io::Error> {
    ServiceBuilder::new()
        .layer(ProducerLayer::from(instrumentation))
        .service(service_fn(move |message: Message| {
            let tx = tx.clone();
            async move {
                tx.send(message)
                    .await
                    .map(|()| Queued)
                    .map_err(|_| std::io::Error::other("consumer gone"))
            }
        }))
}

/// `VmRSS` and `VmHWM` of this process, in kB.
pub fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets `VmHWM` to the current `VmRSS` (Linux: `echo 5 > /proc/self/clear_refs`); false when
/// the kernel refuses.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A loopback address nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address")
}
