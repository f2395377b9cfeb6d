//! Kafka helpers shared by the Kafka examples.

use std::error::Error;

use tracelink::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use tracelink::kafka::rdkafka::client::DefaultClientContext;
use tracelink::kafka::rdkafka::config::ClientConfig;
use tracelink::kafka::rdkafka::types::RDKafkaErrorCode;

/// Creates `topic` unless it exists (brokers such as tansu do not create topics on first use).
pub async fn ensure_topic(brokers: &str, topic: &str) -> Result<(), Box<dyn Error>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating topic {topic}: {code}").into()),
        }
    }
    Ok(())
}
