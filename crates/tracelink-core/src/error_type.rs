//! How failures become the low-cardinality `error.type` attribute.

use std::borrow::Cow;
use std::convert::Infallible;

/// Errors that know their low-cardinality `error.type` value.
///
/// Adapters implement it for their errors (for example the librdkafka error code name, the SQS
/// error code); it is implemented here for `tower::BoxError` (recognising tower's timeout and
/// overload errors) and a few std types.
pub trait ErrorType {
    /// The `error.type` value: a short, stable, low-cardinality name.
    fn error_type(&self) -> Cow<'static, str>;
}

/// The value semconv prescribes when no better type is known.
pub const OTHER_ERROR: &str = "_OTHER";

impl ErrorType for Infallible {
    fn error_type(&self) -> Cow<'static, str> {
        match *self {}
    }
}

impl ErrorType for std::io::Error {
    fn error_type(&self) -> Cow<'static, str> {
        Cow::Owned(format!("{:?}", self.kind()))
    }
}

impl ErrorType for tower::BoxError {
    fn error_type(&self) -> Cow<'static, str> {
        if self.is::<tower::timeout::error::Elapsed>() {
            Cow::Borrowed("timeout")
        } else if self.is::<std::io::Error>() {
            match self.downcast_ref::<std::io::Error>() {
                Some(io) => io.error_type(),
                None => Cow::Borrowed(OTHER_ERROR),
            }
        } else {
            Cow::Borrowed(OTHER_ERROR)
        }
    }
}

/// Classifies an error of type `E` as an `error.type` value: the hook the layers use.
///
/// Implemented by [`DefaultErrorType`] (for errors implementing [`ErrorType`]), by
/// [`TypeNameErrorType`] (any error: its Rust type name), by closures
/// `Fn(&E) -> Cow<'static, str>`, and by `()` (every failure is `_OTHER`).
pub trait ClassifyError<E> {
    /// The `error.type` value for `err`.
    fn classify(&self, err: &E) -> Cow<'static, str>;
}

/// Uses the error's own [`ErrorType`] implementation.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultErrorType;

impl<E: ErrorType> ClassifyError<E> for DefaultErrorType {
    fn classify(&self, err: &E) -> Cow<'static, str> {
        err.error_type()
    }
}

/// Uses the fully qualified Rust type name of the error, as the semantic conventions suggest
/// when nothing better is known. Works for any error type (`anyhow::Error`, your own enums).
#[derive(Debug, Clone, Copy, Default)]
pub struct TypeNameErrorType;

impl<E> ClassifyError<E> for TypeNameErrorType {
    fn classify(&self, _err: &E) -> Cow<'static, str> {
        Cow::Borrowed(std::any::type_name::<E>())
    }
}

/// Records no particular type: every failure is `_OTHER` (status Error is still set).
impl<E> ClassifyError<E> for () {
    fn classify(&self, _err: &E) -> Cow<'static, str> {
        Cow::Borrowed(OTHER_ERROR)
    }
}

impl<E, F> ClassifyError<E> for F
where
    F: Fn(&E) -> Cow<'static, str>,
{
    fn classify(&self, err: &E) -> Cow<'static, str> {
        self(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_error_recognises_timeouts() {
        let e: tower::BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(e.error_type(), "timeout");
        let e: tower::BoxError = "boom".into();
        assert_eq!(e.error_type(), OTHER_ERROR);
        let e: tower::BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(e.error_type(), "BrokenPipe");
    }

    #[test]
    fn type_name_and_closures() {
        assert_eq!(
            ClassifyError::<std::fmt::Error>::classify(&TypeNameErrorType, &std::fmt::Error),
            "core::fmt::Error"
        );
        let f = |_: &u8| Cow::Borrowed("custom");
        assert_eq!(f.classify(&1u8), "custom");
        assert_eq!(ClassifyError::<u8>::classify(&(), &1u8), OTHER_ERROR);
    }
}
