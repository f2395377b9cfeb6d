//! How a consumer span relates to the producer's context.

/// How the `process` span relates to the context extracted from the message.
///
/// | mode | parent of the process span | link to the producer span |
/// |---|---|---|
/// | [`Link`](LinkMode::Link) (default) | the ambient span when the handler is called inside one (an HTTP request, a receive span), otherwise none: a new trace | always, when the message carried a valid context |
/// | [`Parent`](LinkMode::Parent) | the producer span (one trace end to end); the ambient span only when the message carried no valid context | always as well, so nothing is lost when a backend learns to render links |
///
/// The adapters' consume loops call handlers outside any span, so in `Link` mode every message
/// starts a trace of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkMode {
    /// A new trace (or a child of the ambient span) with a span link to the producer.
    #[default]
    Link,
    /// A child of the producer span, with a span link to it as well.
    Parent,
}
