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
pub fn rabbitmq(uri: &str) -> MessagingSystem {
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
        let s = rabbitmq("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.name(), "rabbitmq");
        assert_eq!(s.publish_operation(), "publish");
        assert!(format!("{s:?}").contains("127.0.0.1"));
        let s = rabbitmq("not a uri ::");
        assert_eq!(s.name(), "rabbitmq");
    }
}
