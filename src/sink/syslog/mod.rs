//! The syslog sink: RFC 5424 (or RFC 3164) over UDP or TCP.
//!
//! Acknowledgement: over TCP, a batch is acknowledged once it was written
//! and flushed to the socket. Syslog has no application-level
//! acknowledgement, so a receiver that crashes after reading may still lose
//! what it had buffered. Over UDP a batch is acknowledged once sent: UDP is
//! best effort, and datagrams can be lost without anyone knowing.
//!
//! Size limits: over TCP/TLS a message longer than `max_message_bytes` is
//! not sent but dead-lettered with the reason (set the limit to what the
//! receiver accepts; rsyslog's default is 8 KiB). A UDP datagram cannot be
//! split: a longer message is truncated at a character boundary and logged.

mod format;
mod tls;

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub use format::{Format, Header, SD_ID};
pub use tls::{TlsOptions, TlsSettings};

use super::{Delivered, Sink, SinkError};
use crate::state::OutboxRecord;

/// How messages reach the receiver.
#[derive(Debug, Clone)]
pub enum Transport {
    Udp,
    /// TCP with RFC 6587 octet counting (`LEN SP MSG`).
    TcpOctetCounting,
    /// TCP with a line feed after each message (non-transparent framing).
    TcpLf,
    /// TLS with octet counting (RFC 5425).
    Tls(TlsSettings),
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
    stream: Option<Box<dyn Stream>>,
    udp: Option<UdpSocket>,
}

/// A connected TCP or TLS stream.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Stream
    for T
{
}

/// How long a new TLS connection waits for the receiver to reject it.
/// With TLS 1.3 the client's handshake completes before the server has
/// checked the client certificate; a refusal arrives as an alert just
/// after, and a batch written in between would be lost.
const TLS_SETTLE: Duration = Duration::from_secs(1);

/// Whether the receiver has closed the connection or sent an alert. A
/// syslog receiver never sends data, so anything readable is one of these.
/// Waits at most `wait` (zero: only what has already arrived).
async fn closed_by_peer(stream: &mut Box<dyn Stream>, wait: Duration) -> Option<String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => None,
        Ok(Ok(0)) => Some("the receiver closed the connection".to_string()),
        Ok(Err(e)) => Some(e.to_string()),
    }
}

impl SyslogSink {
    pub fn new(config: SyslogConfig) -> Self {
        Self {
            config,
            stream: None,
            udp: None,
        }
    }

    /// Writes the batch over TCP or TLS. Returns the records refused for
    /// good: messages over `max_message_bytes`, which a receiver would cut
    /// (rsyslog silently, at its own limit) after we had acknowledged them.
    async fn deliver_tcp(
        &mut self,
        batch: &[OutboxRecord],
    ) -> Result<Vec<(usize, String)>, std::io::Error> {
        let max = self.config.max_message_bytes;
        let mut rejected = Vec::new();
        let mut buf = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let message = self.config.header.message(record);
            if message.len() > max {
                rejected.push((
                    index,
                    format!(
                        "syslog message of {} bytes exceeds max_message_bytes ({max})",
                        message.len()
                    ),
                ));
                continue;
            }
            match self.config.transport {
                Transport::TcpOctetCounting | Transport::Tls(_) => {
                    buf.extend_from_slice(format!("{} ", message.len()).as_bytes());
                    buf.extend_from_slice(message.as_bytes());
                }
                _ => {
                    // The envelope is compact JSON and the header holds no
                    // control characters: no raw line feed inside.
                    buf.extend_from_slice(message.as_bytes());
                    buf.push(b'\n');
                }
            }
        }
        let fresh_tls = self.stream.is_none() && matches!(self.config.transport, Transport::Tls(_));
        if self.stream.is_none() {
            let tcp = TcpStream::connect(&self.config.address).await?;
            tcp.set_nodelay(true)?;
            let stream: Box<dyn Stream> = match &self.config.transport {
                Transport::Tls(tls) => {
                    let connector =
                        tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.client));
                    Box::new(connector.connect(tls.server_name.clone(), tcp).await?)
                }
                _ => Box::new(tcp),
            };
            tracing::info!(address = %self.config.address, "connected to syslog receiver");
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        // A connection the receiver closed (a restart, an idle timeout)
        // would swallow the next write; find out first.
        if let Some(reason) = closed_by_peer(stream, Duration::ZERO).await {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                reason,
            ));
        }
        stream.write_all(&buf).await?;
        stream.flush().await?;
        // With TLS 1.3 a receiver refuses a client certificate only after
        // the handshake, and drops what was written in the meantime. The
        // first batch of a session is acknowledged only if no refusal came:
        // a refusal means a retry (perhaps a repeat), never a loss.
        if fresh_tls {
            if let Some(reason) = closed_by_peer(stream, TLS_SETTLE).await {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("the receiver refused the TLS session: {reason}"),
                ));
            }
        }
        Ok(rejected)
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
            // Cut at a character boundary, so the datagram stays UTF-8.
            let mut end = bytes.len().min(max);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            if end < bytes.len() {
                tracing::warn!(
                    event_id = %record.event_id,
                    bytes = bytes.len(),
                    max,
                    "syslog message truncated to fit a udp datagram"
                );
            }
            socket.send(&bytes[..end]).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for SyslogSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let timeout = self.config.timeout;
        let result = match self.config.transport {
            Transport::Udp => tokio::time::timeout(timeout, self.deliver_udp(batch))
                .await
                .map(|sent| sent.map(|()| Vec::new())),
            _ => tokio::time::timeout(timeout, self.deliver_tcp(batch)).await,
        };
        let error = match result {
            Ok(Ok(rejected)) => return Ok(Delivered { rejected }),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {}s", timeout.as_secs_f64()),
        };
        // Reconnect on the next attempt: part of the batch may be written.
        self.stream = None;
        self.udp = None;
        Err(SinkError::Unavailable(format!(
            "syslog {}: {error}",
            self.config.address
        )))
    }
}
