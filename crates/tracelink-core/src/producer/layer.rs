use tower::Layer;

use crate::error_type::DefaultErrorType;
use crate::instrumentation::Instrumentation;
use crate::message::MessagingSystem;
use crate::producer::ProducerService;

/// Wraps a publishing service in a PRODUCER span per message.
///
/// `C` turns the inner service's errors into `error.type` values: [`DefaultErrorType`] uses
/// their [`ErrorType`](crate::ErrorType) implementation; swap it with
/// [`with_error_type`](ProducerLayer::with_error_type).
#[derive(Debug, Clone)]
pub struct ProducerLayer<C = DefaultErrorType> {
    pub(crate) instrumentation: Instrumentation,
    pub(crate) classify: C,
}

impl ProducerLayer {
    /// A layer with every default for `system`.
    pub fn new(system: MessagingSystem) -> Self {
        Self::from(Instrumentation::new(system))
    }
}

impl From<Instrumentation> for ProducerLayer {
    fn from(instrumentation: Instrumentation) -> Self {
        Self {
            instrumentation,
            classify: DefaultErrorType,
        }
    }
}

impl<C> ProducerLayer<C> {
    /// Classifies the inner service's errors with `classify` (a
    /// [`ClassifyError`](crate::ClassifyError), e.g. a closure `|e: &E| -> Cow<'static, str>`).
    pub fn with_error_type<C2>(self, classify: C2) -> ProducerLayer<C2> {
        ProducerLayer {
            instrumentation: self.instrumentation,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for ProducerLayer<C> {
    type Service = ProducerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ProducerService {
            inner,
            instrumentation: self.instrumentation.clone(),
            classify: self.classify.clone(),
        }
    }
}
