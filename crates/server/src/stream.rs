//! Streamed responses whose memory does not grow with their length.
//!
//! A handler checks its request and reads what decides the status (a missing database is a
//! 404, not a cut-off 200), then hands a producer to [`respond`]. The producer runs as a tracked
//! task and writes through a [`BodyWriter`] into a bounded channel that the response body reads
//! from: small writes are gathered into frames of about [`FRAME`] bytes, and a full channel
//! holds the producer back until the client has read. Inline attachments are read from the store
//! in ranges and base64-encoded range by range ([`BodyWriter::attachment`]).

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderValue, StatusCode, header};
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

    /// Writes an attachment's bytes as base64 (without quotes), read from the store one range at
    /// a time.
    pub async fn attachment(&mut self, state: &AppState, digest: &str) -> Result<(), StreamEnd> {
        let mut offset = 0;
        loop {
            let range = state
                .store
                .attachment_range(digest, offset, ATTACHMENT_RANGE)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| {
                    ApiError::Internal(format!("attachment {digest} missing from the store"))
                })?;
            let encoded = BASE64.encode(&range);
            self.write(&encoded).await?;
            if (range.len() as u64) < ATTACHMENT_RANGE {
                return Ok(());
            }
            offset += ATTACHMENT_RANGE;
        }
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
