//! JSON lines on standard output.

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{json_lines, Delivered, Sink, SinkError};
use crate::state::OutboxRecord;

/// Writes each event as one JSON line; acknowledged once flushed.
#[derive(Debug)]
pub struct StdoutSink {
    out: tokio::io::Stdout,
}

impl StdoutSink {
    pub fn new() -> Self {
        Self {
            out: tokio::io::stdout(),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let buf = json_lines(batch);
        let result = async {
            self.out.write_all(&buf).await?;
            self.out.flush().await
        }
        .await;
        result
            .map(|()| Delivered::default())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => {
                    SinkError::Closed(format!("standard output closed: {e}"))
                }
                _ => SinkError::Unavailable(format!("writing to standard output: {e}")),
            })
    }
}
