use tower::Layer;

use crate::consumer::ConsumerService;
use crate::error_type::DefaultErrorType;
use crate::instrumentation::Instrumentation;
use crate::message::MessagingSystem;

/// Wraps a message handler in a CONSUMER `process` span per message.
///
/// `C` turns handler errors into `error.type` values (see
/// [`ProducerLayer`](crate::ProducerLayer)); for handler errors that do not implement
/// [`ErrorType`](crate::ErrorType), use [`TypeNameErrorType`](crate::TypeNameErrorType) or a closure.
#[derive(Debug, Clone)]
pub struct ConsumerLayer<C = DefaultErrorType> {
    instrumentation: Instrumentation,
    classify: C,
}

impl ConsumerLayer {
    /// A layer with every default for `system`.
    pub fn new(system: MessagingSystem) -> Self {
        Self::from(Instrumentation::new(system))
    }
}

impl From<Instrumentation> for ConsumerLayer {
    fn from(instrumentation: Instrumentation) -> Self {
        Self {
            instrumentation,
            classify: DefaultErrorType,
        }
    }
}

impl<C> ConsumerLayer<C> {
    /// Classifies handler errors with `classify`.
    pub fn with_error_type<C2>(self, classify: C2) -> ConsumerLayer<C2> {
        ConsumerLayer {
            instrumentation: self.instrumentation,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for ConsumerLayer<C> {
    type Service = ConsumerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsumerService {
            inner,
            instrumentation: self.instrumentation.clone(),
            classify: self.classify.clone(),
        }
    }
}
