//! SQS helpers shared by the SQS examples.

use std::error::Error;

use tracelink::sqs::aws_sdk_sqs::Client;

/// The URL of queue `name`, created when missing (CreateQueue is idempotent).
pub async fn ensure_queue(client: &Client, name: &str) -> Result<String, Box<dyn Error>> {
    Ok(client
        .create_queue()
        .queue_name(name)
        .send()
        .await?
        .queue_url()
        .ok_or("CreateQueue returned no queue URL")?
        .to_owned())
}
