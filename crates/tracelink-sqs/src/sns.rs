//! The trace context inside an SNS notification envelope.
//!
//! When SNS delivers to an SQS queue without raw message delivery, the SQS message body is a JSON
//! envelope and the publisher's message attributes sit in its `MessageAttributes`
//! (`{"traceparent": {"Type": "String", "Value": "00-…"}}`), not in the SQS message's.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "TopicArn")]
    topic_arn: Option<String>,
    #[serde(rename = "MessageAttributes", default)]
    message_attributes: HashMap<String, EnvelopeAttribute>,
}

#[derive(Deserialize)]
struct EnvelopeAttribute {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Value")]
    value: Option<String>,
}

/// The `String` attributes of an SNS notification envelope; `None` when `body` is not one or it
/// carries none. Binary attributes (base64 in the envelope) are left out.
pub(crate) fn envelope_attributes(body: &str) -> Option<HashMap<String, String>> {
    // Cheap checks first: most bodies are not SNS envelopes and should not be parsed.
    if !body.trim_start().starts_with('{') || !body.contains("\"MessageAttributes\"") {
        return None;
    }
    let envelope: Envelope = serde_json::from_str(body).ok()?;
    if envelope.kind.as_deref() != Some("Notification") || envelope.topic_arn.is_none() {
        return None;
    }
    let fields: HashMap<String, String> = envelope
        .message_attributes
        .into_iter()
        .filter(|(_, a)| a.kind == "String" || a.kind.starts_with("String."))
        .filter_map(|(k, a)| Some((k, a.value?)))
        .collect();
    (!fields.is_empty()).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_string_attributes_of_a_notification() {
        let body = r#"{"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:us-east-1:1:t",
            "Message":"hi","MessageAttributes":{
              "traceparent":{"Type":"String","Value":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
              "blob":{"Type":"Binary","Value":"AAE="}}}"#;
        let fields = envelope_attributes(body).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(
            fields["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn other_bodies_are_not_envelopes() {
        assert!(envelope_attributes("hello").is_none());
        assert!(envelope_attributes(r#"{"MessageAttributes":{}}"#).is_none());
        assert!(envelope_attributes(
            r#"{"Type":"Notification","TopicArn":"a","MessageAttributes":{}}"#
        )
        .is_none());
        assert!(envelope_attributes(
            r#"{"Type":"Notification","TopicArn":"a","MessageAttributes":"#
        )
        .is_none());
        assert!(envelope_attributes(r#"{"Type":"Other","TopicArn":"a","MessageAttributes":{"k":{"Type":"String","Value":"v"}}}"#).is_none());
    }
}
