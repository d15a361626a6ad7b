//! One TCP connection with pipelining: any number of requests in flight,
//! responses matched to them in order.
//!
//! Writes happen in the caller's task, under a lock, so requests reach the
//! wire in the order callers got the lock. A background task reads response
//! frames (`LengthDelimitedCodec`) and hands each to the oldest waiting
//! request, checking the correlation id.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use spool::net::{BusyPoll, Poller};
use spool::protocol::{Acks, ApiKey, Request, Response, FRAME_PREFIX_LEN};
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
    /// The broker's `max_frame_bytes`, learnt from the handshake: a larger
    /// frame is refused here, before a byte of it is sent (the broker would
    /// close the connection on it).
    max_frame: AtomicU32,
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
    pub async fn open(stream: TcpStream, busy_poll: BusyPoll) -> Connection {
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
            busy_poll,
        ));
        Connection {
            writer: tokio::sync::Mutex::new(write_half),
            pending,
            next_id: AtomicU32::new(1),
            broken,
            reader,
            max_frame: AtomicU32::new(u32::MAX),
        }
    }

    pub fn set_max_frame(&self, bytes: u32) {
        self.max_frame.store(bytes, Ordering::Relaxed);
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame.load(Ordering::Relaxed)
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
        partition: u32,
        acks: Acks,
        batch: &Bytes,
    ) -> Result<ResponseFuture> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let head = Request::produce_head(topic, partition, acks, batch.len(), id);
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
        let len = parts.iter().map(|p| p.len()).sum::<usize>() - FRAME_PREFIX_LEN;
        let max = self.max_frame.load(Ordering::Relaxed);
        if len > max as usize {
            return Err(ClientError::TooLarge {
                what: api.name(),
                size: len,
                max,
            });
        }
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
        if let Err(e) = write_all_vectored(&mut *writer, parts).await {
            self.broken.store(true, Ordering::Release);
            // The reader fails whatever is pending, this request included.
            let _ = writer.shutdown().await;
            return Err(ClientError::Disconnected(e.to_string()));
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

/// Writes every part, in order, with as few `writev` calls as the socket
/// allows: a produce's head and its batch leave in one TCP segment when they
/// fit, not two (one trip through the network stack, and the broker never
/// wakes for half a frame), and the batch is still not copied.
async fn write_all_vectored(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = writer.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Reads response frames and completes pending requests in order. When the
/// connection ends, every pending request fails.
async fn read_responses(
    mut read_half: OwnedReadHalf,
    pending: Arc<Mutex<Pending>>,
    broken: Arc<AtomicBool>,
    busy_poll: BusyPoll,
) {
    let mut poller = Poller::new(busy_poll);
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_RESPONSE_FRAME)
        .new_codec();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        let frame = match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                poller.message(frame.len());
                frame
            }
            Ok(None) => {
                // `ClientConfig::busy_poll`: poll a while before sleeping,
                // between responses only (the rest of one that has begun
                // streams in; spinning for it takes a CPU from the broker).
                if buf.is_empty() {
                    poller.before_wait(read_half.as_ref()).await;
                }
                match read_half.read_buf(&mut buf).await {
                    Ok(0) => break "the broker closed the connection".to_owned(),
                    Ok(_) => {
                        poller.arrived();
                        continue;
                    }
                    Err(e) => break e.to_string(),
                }
            }
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

#[cfg(test)]
mod tests {
    use super::write_all_vectored;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A socket that takes at most `per_call` bytes per write and counts
    /// the writes.
    struct Sink {
        taken: Vec<u8>,
        calls: usize,
        per_call: usize,
    }

    impl Sink {
        fn new(per_call: usize) -> Sink {
            Sink {
                taken: Vec::new(),
                calls: 0,
                per_call,
            }
        }
    }

    impl tokio::io::AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.per_call - n);
                self.taken.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_and_batch_go_out_in_one_write() {
        let head = [1u8; 40];
        let batch = vec![2u8; 4000];
        let mut sink = Sink::new(usize::MAX);
        write_all_vectored(&mut sink, &[&head, &batch])
            .await
            .unwrap();
        assert_eq!(sink.calls, 1);
        assert_eq!(sink.taken, [&head[..], &batch[..]].concat());
    }

    #[tokio::test]
    async fn short_writes_resume_where_they_stopped() {
        let parts: [&[u8]; 4] = [b"head", b"", b"a batch of bytes", b"!"];
        let whole = parts.concat();
        for per_call in [1, 3, 4, 5, 7, 20] {
            let mut sink = Sink::new(per_call);
            write_all_vectored(&mut sink, &parts).await.unwrap();
            assert_eq!(sink.taken, whole, "{per_call} bytes per write");
            assert_eq!(sink.calls, whole.len().div_ceil(per_call));
        }
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_is_an_error() {
        let mut sink = Sink::new(0);
        let e = write_all_vectored(&mut sink, &[b"x"]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }
}
