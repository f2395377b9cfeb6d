use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use opentelemetry::context::{FutureExt, WithContext};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error_type::{ClassifyError, DefaultErrorType};
use crate::instrumentation::{Instrumentation, Operation, PublishOperation};
use crate::message::{BatchPublishResponse, Destination, MessagingSystem, OutgoingMessage};
use crate::producer::OnInject;

/// Attribute naming the entry of a failed batch message on the `send` span's event. Not a
/// semantic convention (there is none for it), so spelled here.
const BATCH_INDEX: &str = "messaging.batch.index";

/// Wraps a service publishing a `Vec` of messages at once (Kafka batches, SQS
/// `SendMessageBatch`, ...).
///
/// One `send` span covers the call. Each message gets its own creation context: a PRODUCER
/// `create` span per message, child of the `send` span (which is then of kind CLIENT), whose
/// context is injected into that message. With
/// [`without_create_spans`](crate::InstrumentationBuilder::without_create_spans) the PRODUCER
/// `send` span's context goes into every message instead. Per-entry failures reported by the
/// response ([`BatchPublishResponse`]) end that entry's `create` span with an error (or add a
/// `message failed` event to the `send` span), and mark the `send` span failed too.
///
/// `P` is called right after each message's injection ([`OnInject`]); swap it with
/// [`on_inject`](BatchProducerLayer::on_inject).
#[derive(Debug, Clone)]
pub struct BatchProducerLayer<C = DefaultErrorType, P = ()> {
    instrumentation: Instrumentation,
    classify: C,
    on_inject: P,
}

impl BatchProducerLayer {
    /// A layer with every default for `system`.
    pub fn new(system: MessagingSystem) -> Self {
        Self::from(Instrumentation::new(system))
    }
}

impl From<Instrumentation> for BatchProducerLayer {
    fn from(instrumentation: Instrumentation) -> Self {
        Self {
            instrumentation,
            classify: DefaultErrorType,
            on_inject: (),
        }
    }
}

impl<C, P> BatchProducerLayer<C, P> {
    /// Classifies the inner service's errors with `classify`.
    pub fn with_error_type<C2>(self, classify: C2) -> BatchProducerLayer<C2, P> {
        BatchProducerLayer {
            instrumentation: self.instrumentation,
            classify,
            on_inject: self.on_inject,
        }
    }

    /// Calls `hook` right after each message's context was injected (see [`OnInject`]).
    pub fn on_inject<P2>(self, hook: P2) -> BatchProducerLayer<C, P2> {
        BatchProducerLayer {
            instrumentation: self.instrumentation,
            classify: self.classify,
            on_inject: hook,
        }
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for BatchProducerLayer<C, P> {
    type Service = BatchProducerService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BatchProducerService {
            inner,
            instrumentation: self.instrumentation.clone(),
            classify: self.classify.clone(),
            on_inject: self.on_inject.clone(),
        }
    }
}

/// The service made by [`BatchProducerLayer`].
#[derive(Debug, Clone)]
pub struct BatchProducerService<S, C, P = ()> {
    inner: S,
    instrumentation: Instrumentation,
    classify: C,
    on_inject: P,
}

impl<S, C, P, M> Service<Vec<M>> for BatchProducerService<S, C, P>
where
    S: Service<Vec<M>>,
    S::Response: BatchPublishResponse,
    C: ClassifyError<S::Error> + Clone,
    P: OnInject<M>,
    M: OutgoingMessage,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BatchProducerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut messages: Vec<M>) -> Self::Future {
        let ambient = Context::current();
        let len = messages.len();
        let send = {
            let destination = messages
                .first()
                .map(|m| m.destination())
                .unwrap_or_else(|| Destination::new(""));
            self.instrumentation
                .start_batch_send(&destination, messages.len(), &ambient)
        };
        let send_cx = send.context().clone();
        let creates = if self.instrumentation.create_spans() {
            messages
                .iter_mut()
                .map(|message| {
                    let create = self.instrumentation.start_publish(
                        message,
                        &send_cx,
                        PublishOperation::Create,
                    );
                    if let Some((name, attributes)) =
                        self.on_inject.on_inject(message, create.context())
                    {
                        create.event_with(name, attributes);
                    }
                    create
                })
                .collect()
        } else {
            for message in &mut messages {
                self.instrumentation.inject_message(&send_cx, message);
                if let Some((name, attributes)) = self.on_inject.on_inject(message, &send_cx) {
                    send.event_with(name, attributes);
                }
            }
            Vec::new()
        };
        let inner = {
            let _guard = send_cx.clone().attach();
            self.inner.call(messages)
        };
        BatchProducerFuture {
            inner: inner.with_context(send_cx),
            send: Some(send),
            creates,
            len,
            classify: self.classify.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`BatchProducerService`].
    pub struct BatchProducerFuture<F, C> {
        #[pin]
        inner: WithContext<F>,
        send: Option<Operation>,
        creates: Vec<Operation>,
        len: usize,
        classify: C,
    }
}

impl<F, C> std::fmt::Debug for BatchProducerFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProducerFuture")
            .field("send", &self.send)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, C> Future for BatchProducerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    T: BatchPublishResponse,
    C: ClassifyError<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(send) = this.send.take() else {
            return Poll::Ready(result);
        };
        match &result {
            Err(err) => {
                let error_type = this.classify.classify(err);
                for create in this.creates.drain(..) {
                    create.fail(error_type.clone());
                }
                send.fail(error_type);
            }
            Ok(response) => {
                let mut first_failure = None;
                let mut creates = std::mem::take(this.creates).into_iter();
                for index in 0..*this.len {
                    let mut attributes = Vec::new();
                    let outcome = response.entry(index, &mut attributes);
                    match (outcome, creates.next()) {
                        (Ok(()), Some(create)) => create.succeed(attributes),
                        (Ok(()), None) => {}
                        (Err(error_type), Some(create)) => {
                            first_failure.get_or_insert_with(|| error_type.clone());
                            create.fail(error_type);
                        }
                        (Err(error_type), None) => {
                            send.context().span().add_event(
                                "message failed",
                                vec![
                                    KeyValue::new(BATCH_INDEX, index as i64),
                                    KeyValue::new(attr::ERROR_TYPE, error_type.clone()),
                                ],
                            );
                            first_failure.get_or_insert(error_type);
                        }
                    }
                }
                match first_failure {
                    Some(error_type) => send.fail(error_type),
                    None => send.succeed(Vec::new()),
                }
            }
        }
        Poll::Ready(result)
    }
}
