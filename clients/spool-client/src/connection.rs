//! One TCP connection with pipelining: any number of requests in flight,
//! responses matched to them in order.
//!
//! Writes happen in the caller's task, under a lock, so requests reach the
//! wire in the order callers got the lock. A background task reads response
//! frames (`LengthDelimitedCodec`) and hands each to the oldest waiting
//! request, checking the correlation id.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use spool::protocol::{Acks, ApiKey, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::error::{ClientError, Result};

/// Largest response frame accepted: a fetch returns at most what it asked
/// for plus one batch, and batches are bounded by the broker's frame limit.
const MAX_RESPONSE_FRAME: usize = 1 << 30;

type Reply = oneshot::Sender<Result<Response>>;

struct Pending {
    requests: VecDeque<(u32, ApiKey, Reply)>,
    /// Why the connection died, once it has.
    dead: Option<String>,
}

/// A live connection to the broker.
pub(crate) struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU32,
    broken: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Marks the connection broken when dropped: armed while a frame is being
/// written, disarmed (forgotten) once it is whole.
struct TornGuard<'a>(&'a AtomicBool);

impl Drop for TornGuard<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A response to come.
pub(crate) type ResponseFuture = oneshot::Receiver<Result<Response>>;

impl Connection {
    pub async fn open(stream: TcpStream) -> Connection {
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending {
            requests: VecDeque::new(),
            dead: None,
        }));
        let broken = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_responses(
            read_half,
            Arc::clone(&pending),
            Arc::clone(&broken),
        ));
        Connection {
            writer: tokio::sync::Mutex::new(write_half),
            pending,
            next_id: AtomicU32::new(1),
            broken,
            reader,
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Sends a request; the returned receiver yields its response.
    pub async fn send(&self, request: &Request) -> Result<ResponseFuture> {
        let mut frame = BytesMut::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.encode(id, &mut frame);
        self.write(id, request.api_key(), &[&frame], true).await
    }

    /// Sends a produce of `batch` (a finished batch) without copying it into
    /// the request frame. With `Acks::None` nothing comes back: the receiver
    /// then resolves at once with an error that callers ignore.
    pub async fn send_produce(
        &self,
        topic: &str,
        acks: Acks,
        batch: &Bytes,
    ) -> Result<ResponseFuture> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let head = Request::produce_head(topic, acks, batch.len(), id);
        self.write(id, ApiKey::Produce, &[&head, batch], acks == Acks::Commit)
            .await
    }

    async fn write(
        &self,
        id: u32,
        api: ApiKey,
        parts: &[&[u8]],
        answered: bool,
    ) -> Result<ResponseFuture> {
        let (tx, rx) = oneshot::channel();
        let mut writer = self.writer.lock().await;
        if self.is_broken() {
            return Err(ClientError::Disconnected("connection broken".into()));
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = &pending.dead {
                return Err(ClientError::Disconnected(reason.clone()));
            }
            if answered {
                pending.requests.push_back((id, api, tx));
            }
        }
        // If the caller gives up (a timeout, a dropped future) mid-frame,
        // the stream holds half a request: nothing more may follow it.
        let torn = TornGuard(&self.broken);
        for part in parts {
            if let Err(e) = writer.write_all(part).await {
                self.broken.store(true, Ordering::Release);
                // The reader fails whatever is pending, this request included.
                let _ = writer.shutdown().await;
                return Err(ClientError::Disconnected(e.to_string()));
            }
        }
        std::mem::forget(torn);
        Ok(rx)
    }

    /// Sends a request and waits for its response.
    pub async fn call(&self, request: &Request) -> Result<Response> {
        let rx = self.send(request).await?;
        rx.await
            .map_err(|_| ClientError::Disconnected("connection closed".into()))?
    }
}

/// Reads response frames and completes pending requests in order. When the
/// connection ends, every pending request fails.
async fn read_responses(
    mut read_half: OwnedReadHalf,
    pending: Arc<Mutex<Pending>>,
    broken: Arc<AtomicBool>,
) {
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_RESPONSE_FRAME)
        .new_codec();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        let frame = match codec.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => match read_half.read_buf(&mut buf).await {
                Ok(0) => break "the broker closed the connection".to_owned(),
                Ok(_) => continue,
                Err(e) => break e.to_string(),
            },
            Err(e) => break e.to_string(),
        };
        let next = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .pop_front();
        let Some((id, api, reply)) = next else {
            break "a response arrived for no request".to_owned();
        };
        let response = Response::parse(api, frame.freeze()).map_err(ClientError::from);
        if let Ok(r) = &response {
            if r.correlation_id != id {
                let reason = format!("response {} arrived for request {id}", r.correlation_id);
                let _ = reply.send(Err(ClientError::Disconnected(reason.clone())));
                break reason;
            }
        }
        let _ = reply.send(response);
    };
    broken.store(true, Ordering::Release);
    let drained: Vec<_> = {
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        p.dead = Some(reason.clone());
        p.requests.drain(..).collect()
    };
    for (_, _, reply) in drained {
        let _ = reply.send(Err(ClientError::Disconnected(reason.clone())));
    }
}
