//! The `MessagingSystem` of a RabbitMQ connection.

use std::str::FromStr;

use lapin::uri::AMQPUri;
use tracelink_core::MessagingSystem;

/// The `messaging.system` value of RabbitMQ.
pub const RABBITMQ: &str = "rabbitmq";

/// RabbitMQ (`messaging.system` = `rabbitmq`, publishes named `publish`) reached at `uri` (an
/// `amqp://` or `amqps://` URI as given to [`Connection::connect`](lapin::Connection::connect)):
/// its host and port become `server.address` and `server.port`. A URI that does not parse gives
/// no server attributes.
///
/// Every adapter names this helper `messaging_system`.
pub fn messaging_system(uri: &str) -> MessagingSystem {
    let system = MessagingSystem::new(RABBITMQ).with_publish_operation("publish");
    match AMQPUri::from_str(uri) {
        Ok(uri) => system.with_server(uri.authority.host, Some(uri.authority.port)),
        Err(_) => system,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_from_uri() {
        let s = messaging_system("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.name(), "rabbitmq");
        assert_eq!(s.publish_operation(), "publish");
        assert!(format!("{s:?}").contains("127.0.0.1"));
        let s = messaging_system("not a uri ::");
        assert_eq!(s.name(), "rabbitmq");
    }

    #[test]
    fn credentials_in_the_uri_never_reach_attributes() {
        let s = messaging_system("amqp://alice:hunter2@broker.example:5673/%2f");
        assert_eq!(s.server_address(), Some("broker.example"));
        assert_eq!(s.server_port(), Some(5673));
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("alice") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
