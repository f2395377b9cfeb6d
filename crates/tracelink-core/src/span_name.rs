//! What goes after the operation name in span names.

use crate::message::Destination;

/// The destination part of span names (`{operation} {destination}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpanName {
    /// The message's destination template when it has one, else its name; temporary and
    /// anonymous destinations are left out (semantic conventions, "Span name").
    #[default]
    Destination,
    /// A fixed low-cardinality text, for per-user or per-request destinations:
    /// `SpanName::Template("user-queue.*".into())` names spans `process user-queue.*`.
    Template(String),
    /// The operation name only (`send`, `process`).
    OperationOnly,
}

impl SpanName {
    pub(crate) fn render(&self, operation: &str, destination: &Destination<'_>) -> String {
        let target = match self {
            SpanName::Template(template) => Some(template.as_str()),
            SpanName::OperationOnly => None,
            SpanName::Destination => match destination.template {
                Some(template) => Some(template),
                None if destination.temporary || destination.anonymous => None,
                None if destination.name.is_empty() => None,
                None => Some(destination.name),
            },
        };
        match target {
            Some(target) => {
                let mut name = String::with_capacity(operation.len() + 1 + target.len());
                name.push_str(operation);
                name.push(' ');
                name.push_str(target);
                name
            }
            None => operation.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let d = Destination::new("orders");
        assert_eq!(SpanName::Destination.render("send", &d), "send orders");
        assert_eq!(
            SpanName::Destination.render(
                "process",
                &Destination::new("_INBOX.x").with_template("_INBOX.*")
            ),
            "process _INBOX.*"
        );
        assert_eq!(
            SpanName::Destination.render("send", &Destination::new("tmp").temporary()),
            "send"
        );
        assert_eq!(
            SpanName::Template("q.*".into()).render("send", &d),
            "send q.*"
        );
        assert_eq!(SpanName::OperationOnly.render("send", &d), "send");
    }
}
