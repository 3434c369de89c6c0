//! The syslog sink: RFC 5424 (or RFC 3164) over UDP or TCP.
//!
//! Acknowledgement: over TCP, a batch is acknowledged once it was written
//! and flushed to the socket. Syslog has no application-level
//! acknowledgement, so a receiver that crashes after reading may still lose
//! what it had buffered. Over UDP a batch is acknowledged once sent: UDP is
//! best effort, and datagrams can be lost without anyone knowing.
//!
//! Size limits: a TCP message longer than `max_message_bytes` is sent
//! whole (the receiver must accept it; rsyslog's default is 8 KiB, raise
//! `$MaxMessageSize`). A UDP datagram cannot be split: a message longer than
//! `max_message_bytes` is truncated to it, counted and logged.

mod format;

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

pub use format::{Format, Header, SD_ID};

use super::{Sink, SinkError};
use crate::state::OutboxRecord;

/// How messages reach the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    /// TCP with RFC 6587 octet counting (`LEN SP MSG`).
    TcpOctetCounting,
    /// TCP with a line feed after each message (non-transparent framing).
    TcpLf,
}

/// The syslog sink's settings.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// `host:port` of the receiver.
    pub address: String,
    pub transport: Transport,
    pub header: Header,
    pub max_message_bytes: usize,
    /// Connecting and writing one batch may take this long.
    pub timeout: Duration,
}

/// Writes events to a syslog receiver.
#[derive(Debug)]
pub struct SyslogSink {
    config: SyslogConfig,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
}

impl SyslogSink {
    pub fn new(config: SyslogConfig) -> Self {
        Self {
            config,
            tcp: None,
            udp: None,
        }
    }

    async fn deliver_tcp(&mut self, batch: &[OutboxRecord]) -> Result<(), std::io::Error> {
        let mut buf = Vec::new();
        for record in batch {
            let message = self.config.header.message(record);
            match self.config.transport {
                Transport::TcpOctetCounting => {
                    buf.extend_from_slice(format!("{} ", message.len()).as_bytes());
                    buf.extend_from_slice(message.as_bytes());
                }
                _ => {
                    // The envelope is compact JSON: it holds no raw line feed.
                    buf.extend_from_slice(message.as_bytes());
                    buf.push(b'\n');
                }
            }
        }
        if self.tcp.is_none() {
            let stream = TcpStream::connect(&self.config.address).await?;
            stream.set_nodelay(true)?;
            tracing::info!(address = %self.config.address, "connected to syslog receiver");
            self.tcp = Some(stream);
        }
        let stream = self.tcp.as_mut().expect("connected above");
        stream.write_all(&buf).await?;
        stream.flush().await
    }

    async fn deliver_udp(&mut self, batch: &[OutboxRecord]) -> Result<(), std::io::Error> {
        if self.udp.is_none() {
            let local = if self.config.address.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(&self.config.address).await?;
            self.udp = Some(socket);
        }
        let socket = self.udp.as_ref().expect("bound above");
        let max = self.config.max_message_bytes;
        for record in batch {
            let message = self.config.header.message(record);
            let bytes = message.as_bytes();
            if bytes.len() > max {
                tracing::warn!(
                    event_id = %record.event_id,
                    bytes = bytes.len(),
                    max,
                    "syslog message truncated to fit a udp datagram"
                );
            }
            socket.send(&bytes[..bytes.len().min(max)]).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for SyslogSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<(), SinkError> {
        let timeout = self.config.timeout;
        let result = match self.config.transport {
            Transport::Udp => tokio::time::timeout(timeout, self.deliver_udp(batch)).await,
            _ => tokio::time::timeout(timeout, self.deliver_tcp(batch)).await,
        };
        let error = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {}s", timeout.as_secs_f64()),
        };
        // Reconnect on the next attempt: part of the batch may be written.
        self.tcp = None;
        self.udp = None;
        Err(SinkError::Unavailable(format!(
            "syslog {}: {error}",
            self.config.address
        )))
    }
}
