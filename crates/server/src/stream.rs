//! Streamed responses whose memory does not grow with their length.
//!
//! A handler checks its request and reads what decides the status (a missing database is a
//! 404, not a cut-off 200), then hands a producer to [`respond`]. The producer runs as a tracked
//! task and writes through a [`BodyWriter`] into a bounded channel that the response body reads
//! from: small writes are gathered into frames of about [`FRAME`] bytes, and a full channel
//! holds the producer back until the client has read. Inline attachments are read from the store
//! in ranges and base64-encoded range by range ([`BodyWriter::attachment`]); attachments
//! stored gzip-encoded are decoded as they are read ([`AttachmentReader`]).

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderValue, StatusCode, header};
use outpost_core::attachment::Gunzip;
use tokio::sync::mpsc;

use crate::{ApiError, AppState};

/// Bytes gathered before they are sent as one frame.
pub const FRAME: usize = 64 * 1024;
/// Attachment bytes read from the store at a time: a multiple of 3, so the base64 of each range
/// ends on a whole group and the ranges' encodings concatenate into the attachment's.
pub const ATTACHMENT_RANGE: u64 = 3 * 512 * 1024;
/// Frames waiting for the client, at most.
const QUEUED_FRAMES: usize = 4;

type Chunk = Result<Bytes, std::io::Error>;

/// Why a producer stopped before the end.
#[derive(Debug)]
pub enum StreamEnd {
    /// The client went away; nothing to report.
    ClientGone,
    /// A read failed after the status was sent; the client sees a truncated body.
    Failed(ApiError),
}

impl From<ApiError> for StreamEnd {
    fn from(e: ApiError) -> StreamEnd {
        StreamEnd::Failed(e)
    }
}

/// The writing end of a streamed response.
pub struct BodyWriter {
    tx: mpsc::Sender<Chunk>,
    /// Text not sent yet; flushed at [`FRAME`] bytes.
    buf: Vec<u8>,
}

impl BodyWriter {
    /// Appends text, sending a frame when enough has gathered.
    pub async fn write(&mut self, text: &str) -> Result<(), StreamEnd> {
        self.buf.extend_from_slice(text.as_bytes());
        if self.buf.len() >= FRAME {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what has gathered.
    pub async fn flush(&mut self) -> Result<(), StreamEnd> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .send(Ok(frame))
            .await
            .map_err(|_| StreamEnd::ClientGone)
    }

    /// Writes an attachment's identity bytes as base64 (without quotes), read from the store one
    /// range at a time (and decoded as they come when stored gzip-encoded).
    pub async fn attachment(
        &mut self,
        state: &AppState,
        digest: &str,
        gzip: bool,
    ) -> Result<(), StreamEnd> {
        let mut reader = if gzip {
            AttachmentReader::decoded(state, digest)
        } else {
            AttachmentReader::stored(state, digest, 0, u64::MAX)
        };
        // Bytes carried to the next piece so that each piece encoded is a multiple of three long
        // and the encodings concatenate into the attachment's.
        let mut carry: Vec<u8> = Vec::new();
        while let Some(piece) = reader.next().await? {
            carry.extend_from_slice(&piece);
            let whole = carry.len() - carry.len() % 3;
            let encoded = BASE64.encode(&carry[..whole]);
            carry.drain(..whole);
            self.write(&encoded).await?;
        }
        self.write(&BASE64.encode(&carry)).await
    }
}

/// Reads an attachment from the store a range at a time: the bytes as stored (a byte range of
/// them), or, for one stored gzip-encoded, its identity bytes decoded as they are read. Either
/// way it holds one range of stored bytes and at most about a [`FRAME`] of decoded ones.
pub struct AttachmentReader {
    state: AppState,
    digest: String,
    /// The next stored byte to read.
    offset: u64,
    /// Where the stored bytes wanted end (exclusive); `u64::MAX` for all of them.
    end: u64,
    /// The decoder, for an attachment sent decoded.
    gunzip: Option<Gunzip>,
    /// Stored bytes read and not yet decoded.
    pending: Bytes,
    /// Whether every stored byte wanted has been read.
    read_all: bool,
    done: bool,
}

impl AttachmentReader {
    /// The stored bytes from `from` to `to` (exclusive; `u64::MAX` for the end).
    pub fn stored(state: &AppState, digest: &str, from: u64, to: u64) -> AttachmentReader {
        AttachmentReader {
            state: state.clone(),
            digest: digest.to_owned(),
            offset: from,
            end: to,
            gunzip: None,
            pending: Bytes::new(),
            read_all: from >= to,
            done: false,
        }
    }

    /// The identity bytes of an attachment stored gzip-encoded.
    pub fn decoded(state: &AppState, digest: &str) -> AttachmentReader {
        AttachmentReader {
            gunzip: Some(Gunzip::new()),
            ..AttachmentReader::stored(state, digest, 0, u64::MAX)
        }
    }

    /// Reads the next range of stored bytes wanted into `pending`.
    async fn read_range(&mut self) -> Result<(), ApiError> {
        let len = (self.end - self.offset).min(ATTACHMENT_RANGE);
        let data = self
            .state
            .store
            .attachment_range(&self.digest, self.offset, len)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(format!("attachment {} missing from the store", self.digest))
            })?;
        self.offset += data.len() as u64;
        if (data.len() as u64) < len || self.offset >= self.end {
            self.read_all = true;
        }
        self.pending = Bytes::from(data);
        Ok(())
    }

    /// The next piece of the attachment, `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        let corrupt = |digest: &str| {
            ApiError::Internal(format!(
                "attachment {digest} is not valid gzip in the store"
            ))
        };
        loop {
            if self.done {
                return Ok(None);
            }
            if self.pending.is_empty() && !self.read_all {
                self.read_range().await?;
            }
            let Some(gunzip) = self.gunzip.as_mut() else {
                if self.pending.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.pending)));
            };
            while !self.pending.is_empty() && gunzip.pending() < FRAME {
                let used = gunzip
                    .feed(&self.pending)
                    .map_err(|_| corrupt(&self.digest))?;
                let _ = self.pending.split_to(used);
            }
            if gunzip.pending() > 0 {
                return Ok(Some(Bytes::from(gunzip.take())));
            }
            if self.pending.is_empty() && self.read_all {
                self.done = true;
                let tail = self
                    .gunzip
                    .take()
                    .map(Gunzip::finish)
                    .transpose()
                    .map_err(|_| corrupt(&self.digest))?
                    .unwrap_or_default();
                if !tail.is_empty() {
                    return Ok(Some(Bytes::from(tail)));
                }
            }
        }
    }

    /// The attachment as a response body, read only as the client takes it (so a `HEAD` reads
    /// nothing). A failed read cuts the body, so the client cannot take it for a whole one.
    pub fn into_body(self) -> Body {
        let stream = futures::stream::unfold(self, |mut reader| async move {
            match reader.next().await {
                Ok(Some(piece)) => Some((Ok(piece), reader)),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "attachment answer cut short");
                    reader.done = true;
                    Some((Err(std::io::Error::other("attachment read failed")), reader))
                }
            }
        });
        Body::from_stream(stream)
    }
}

/// A JSON response with `status` whose body `produce` writes. The producer returns its writer
/// so that what it gathered last is sent.
pub fn respond<F, Fut>(state: &AppState, status: StatusCode, produce: F) -> Response
where
    F: FnOnce(BodyWriter) -> Fut,
    Fut: Future<Output = Result<BodyWriter, StreamEnd>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Chunk>(QUEUED_FRAMES);
    let writer = BodyWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(FRAME),
    };
    let produced = produce(writer);
    let task = async move {
        let ended = match produced.await {
            Ok(mut writer) => writer.flush().await,
            Err(e) => Err(e),
        };
        if let Err(StreamEnd::Failed(e)) = ended {
            tracing::warn!(error = %e, "streamed response ended early");
            // An error frame makes the server cut the connection, so the client cannot take
            // the truncated body for a whole one.
            let _ = tx.send(Err(std::io::Error::other("response failed"))).await;
        }
    };
    state
        .tasks
        .spawn(tracing::Instrument::in_current_span(task));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
