//! JSON lines in a file, fsynced before acknowledging, rotated by size.
//!
//! Rotation renames `events.jsonl` to `events.jsonl.1` (shifting older ones
//! up to `.N`, dropping the oldest), then starts a new file; both the file
//! and its directory are fsynced so a crash never loses an acknowledged
//! line. A crash in the middle of a write can leave a partial last line:
//! it is cut off when the file is next opened, and its events are written
//! again because they were never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{json_lines, Delivered, Sink, SinkError};
use crate::config::FileSinkConfig;
use crate::state::OutboxRecord;

/// The file sink.
#[derive(Debug)]
pub struct FileSink {
    inner: Arc<Mutex<Writer>>,
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Writer {
                config,
                file: None,
                size: 0,
            })),
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let buf = json_lines(batch);
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut writer = inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            writer.write(&buf).inspect_err(|_| {
                // Reopen on the next attempt: the file may be half-written.
                writer.file = None;
            })
        })
        .await
        .map_err(|e| SinkError::Unavailable(format!("file writer task failed: {e}")))?
        .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        Ok(Delivered::default())
    }
}

#[derive(Debug)]
struct Writer {
    config: FileSinkConfig,
    file: Option<File>,
    size: u64,
}

/// A file operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
struct FileError {
    action: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Writer {
    fn write(&mut self, buf: &[u8]) -> Result<(), FileError> {
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size + buf.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        let path = self.config.path.clone();
        let file = self.file.as_mut().expect("opened above");
        file.write_all(buf).map_err(err("writing", &path))?;
        file.sync_data().map_err(err("syncing", &path))?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Opens the file for appending, cutting off a partial last line.
    fn open(&mut self) -> Result<(), FileError> {
        let path = self.config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err("creating directory", dir))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .map_err(err("opening", &path))?;
        let len = file
            .metadata()
            .map_err(err("reading metadata of", &path))?
            .len();
        let keep = complete_prefix(&mut file, len).map_err(err("reading", &path))?;
        if keep < len {
            tracing::warn!(path = %path.display(), dropped_bytes = len - keep, "cut off a partial last line left by an interrupted write");
            file.set_len(keep).map_err(err("truncating", &path))?;
            file.sync_all().map_err(err("syncing", &path))?;
        }
        // A new file's directory entry must be durable before its first
        // acknowledged line is.
        sync_dir(&path)?;
        self.size = keep;
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), FileError> {
        let path = self.config.path.clone();
        self.file = None;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let oldest = numbered(self.config.max_files);
        if oldest.exists() {
            std::fs::remove_file(&oldest).map_err(err("removing", &oldest))?;
        }
        for n in (1..self.config.max_files).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1)).map_err(err("renaming", &from))?;
            }
        }
        std::fs::rename(&path, numbered(1)).map_err(err("renaming", &path))?;
        sync_dir(&path)?;
        tracing::info!(path = %path.display(), "rotated file sink");
        self.open()?;
        sync_dir(&path)
    }
}

/// Length of the file up to and including its last newline.
fn complete_prefix(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(chunk.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(pos) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + pos as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn sync_dir(path: &Path) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, body: &str) -> OutboxRecord {
        OutboxRecord {
            seq,
            source_id: "s".into(),
            event_id: seq.to_string(),
            payload: body.to_string(),
        }
    }

    fn sink(dir: &tempfile::TempDir, max_bytes: u64, max_files: u32) -> (FileSink, PathBuf) {
        let path = dir.path().join("out/events.jsonl");
        let sink = FileSink::new(FileSinkConfig {
            path: path.clone(),
            max_bytes,
            max_files,
        });
        (sink, path)
    }

    #[tokio::test]
    async fn writes_lines_and_rotates_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, path) = sink(&dir, 25, 2);
        for i in 0..5 {
            // 11 bytes a line, 2 lines a batch: every batch rotates.
            sink.deliver(&[
                record(2 * i, "{\"n\":\"aaa\"}"),
                record(2 * i + 1, "{\"n\":\"bbb\"}"),
            ])
            .await
            .unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path).lines().count(), 2);
        assert_eq!(
            read(&dir.path().join("out/events.jsonl.1")).lines().count(),
            2
        );
        assert_eq!(
            read(&dir.path().join("out/events.jsonl.2")).lines().count(),
            2
        );
        assert!(!dir.path().join("out/events.jsonl.3").exists());
    }

    #[tokio::test]
    async fn a_partial_last_line_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, path) = sink(&dir, 1 << 20, 1);
        sink.deliver(&[record(1, "{\"a\":1}")]).await.unwrap();
        drop(sink);
        // What a kill -9 in the middle of a write leaves behind.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"b\":")
            .unwrap();
        let (mut sink, _) = self::sink(&dir, 1 << 20, 1);
        sink.deliver(&[record(2, "{\"b\":2}")]).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
    }

    #[tokio::test]
    async fn unwritable_path_is_a_retryable_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("out"), b"not a directory").unwrap();
        let (mut sink, _) = sink(&dir, 1 << 20, 1);
        let err = sink.deliver(&[record(1, "{}")]).await.unwrap_err();
        assert!(
            matches!(err, SinkError::Unavailable(ref m) if m.contains("out")),
            "{err}"
        );
    }
}
