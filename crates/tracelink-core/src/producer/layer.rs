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
///
/// `P` is called right after each injection ([`OnInject`](crate::OnInject)); swap it with
/// [`on_inject`](ProducerLayer::on_inject).
#[derive(Debug, Clone)]
pub struct ProducerLayer<C = DefaultErrorType, P = ()> {
    pub(crate) instrumentation: Instrumentation,
    pub(crate) classify: C,
    pub(crate) on_inject: P,
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
            on_inject: (),
        }
    }
}

impl<C, P> ProducerLayer<C, P> {
    /// Classifies the inner service's errors with `classify` (a
    /// [`ClassifyError`](crate::ClassifyError), e.g. a closure `|e: &E| -> Cow<'static, str>`).
    pub fn with_error_type<C2>(self, classify: C2) -> ProducerLayer<C2, P> {
        ProducerLayer {
            instrumentation: self.instrumentation,
            classify,
            on_inject: self.on_inject,
        }
    }

    /// Calls `hook` right after each message's context was injected (see
    /// [`OnInject`](crate::OnInject)).
    pub fn on_inject<P2>(self, hook: P2) -> ProducerLayer<C, P2> {
        ProducerLayer {
            instrumentation: self.instrumentation,
            classify: self.classify,
            on_inject: hook,
        }
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for ProducerLayer<C, P> {
    type Service = ProducerService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ProducerService {
            inner,
            instrumentation: self.instrumentation.clone(),
            classify: self.classify.clone(),
            on_inject: self.on_inject.clone(),
        }
    }
}
