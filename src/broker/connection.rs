//! One client connection: a reader that takes frames off the socket and
//! dispatches them in order, and a writer that sends the responses back in
//! the same order.
//!
//! Framing is a u32 big-endian length and then the payload, as
//! `tokio_util::codec::LengthDelimitedCodec` would read it. The reader is our
//! own rather than that codec because the broker must act between the prefix
//! and the body: check the length against `max_frame_bytes`, charge it to the
//! global in-flight budget (waiting for room, which stops reading this
//! socket), and only then allocate, under a deadline for the rest of the
//! frame. The codec reserves the whole frame as soon as it sees the prefix.
//!
//! Limits enforced here: `max_frame_bytes` (before any allocation),
//! `frame_timeout` (a started frame must finish), `idle_timeout` (between
//! requests), `max_inflight_bytes` (shared by every connection),
//! `max_queued_bytes` (responses waiting to be written) and `write_timeout`.
//! With `busy_poll` set, a connection polls its socket for a while after
//! each request before it sleeps (`crate::net::poll_readable`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use super::handler::{dispatch, Answer, Peer, Reply};
use super::Broker;
use crate::protocol::{ErrorBody, ErrorCode, Request, RequestHeader, Response, REQUEST_HEADER_LEN};

/// Socket buffer sizes: many small pipelined requests are read (and their
/// responses written) with one syscall.
const READ_BUFFER: usize = 64 * 1024;
const WRITE_BUFFER: usize = 64 * 1024;
/// Responses in flight per connection, whatever their size.
const MAX_PENDING_RESPONSES: usize = 1024;
/// Bytes charged against `max_queued_bytes` for a response without data.
const SMALL_RESPONSE: u64 = 1024;

/// A response on its way to the socket, with its share of the connection's
/// `max_queued_bytes`, held until it has been written.
struct Outgoing {
    reply: Reply,
    queued: OwnedSemaphorePermit,
}

/// Why the reader stopped.
#[derive(Debug)]
enum Stop {
    /// The client closed the connection between frames.
    Closed,
    Idle,
    Shutdown,
    /// The writer is gone (the client stopped reading, or went away).
    WriterGone,
    Protocol(String),
    Io(std::io::Error),
}

/// Serves one connection until the client leaves, a limit closes it, or the
/// broker shuts down (then the requests already read are still answered).
pub async fn serve(broker: Arc<Broker>, socket: TcpStream, shutdown: watch::Receiver<bool>) {
    let peer = socket.peer_addr().ok();
    let _ = socket.set_nodelay(true);
    let (read_half, write_half) = socket.into_split();
    let (tx, rx) = mpsc::channel(MAX_PENDING_RESPONSES);
    let writer = tokio::spawn(write_responses(
        write_half,
        rx,
        broker.config.server.write_timeout,
    ));
    let (gone, client) = watch::channel(false);
    let client = Peer {
        gone: client,
        addr: peer,
    };
    let stop = read_requests(&broker, &client, read_half, tx, shutdown).await;
    // However the reader stopped, nothing more will be read: waiting fetches
    // answer at once with what they have, so the connection's slot, its
    // budgets and its tasks are released now, not when the polls time out.
    let _ = gone.send(true);
    match &stop {
        Stop::Closed | Stop::Shutdown | Stop::WriterGone => {
            tracing::debug!(?peer, ?stop, "connection ends")
        }
        Stop::Idle => tracing::debug!(?peer, "closing idle connection"),
        Stop::Protocol(reason) => tracing::info!(?peer, %reason, "closing connection"),
        Stop::Io(e) => tracing::debug!(?peer, error = %e, "connection failed"),
    }
    // The reader dropped its sender: the writer sends what is queued, then ends.
    let _ = writer.await;
}

async fn read_requests(
    broker: &Arc<Broker>,
    peer: &Peer,
    read_half: OwnedReadHalf,
    tx: mpsc::Sender<Outgoing>,
    mut shutdown: watch::Receiver<bool>,
) -> Stop {
    let server = &broker.config.server;
    let queued = Arc::new(Semaphore::new(server.max_queued_bytes as usize));
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    let mut poller = crate::net::Poller::new(server.busy_poll);
    loop {
        let waited = reader.buffer().is_empty();
        if waited {
            // Poll a while for the next request before sleeping, if this
            // connection's requests come quickly (see `spool::net`).
            poller.before_wait(reader.get_ref().as_ref()).await;
        }
        // Between frames: wait for the first byte of the next one. The
        // connection is idle only while it waits for nothing: a long poll in
        // flight keeps it open however long it lasts.
        let all_answered = server.max_queued_bytes as usize;
        loop {
            let started = tokio::select! {
                r = timeout(server.idle_timeout, reader.fill_buf()) => r,
                _ = shutdown.changed() => return Stop::Shutdown,
                _ = tx.closed() => return Stop::WriterGone,
            };
            match started {
                Err(_) if queued.available_permits() < all_answered => continue,
                Err(_) => return Stop::Idle,
                Ok(Err(e)) => return Stop::Io(e),
                Ok(Ok([])) => return Stop::Closed,
                Ok(Ok(_)) => break,
            }
        }
        if waited {
            poller.arrived();
        }
        // One deadline for the whole frame, from its first byte (a prefix
        // and a body trickled separately get no more time than one frame).
        let mut deadline = Instant::now() + server.frame_timeout;
        let len = match timeout_at(deadline, reader.read_u32()).await {
            Err(_) => return Stop::Protocol("frame prefix not completed in time".into()),
            Ok(Err(e)) => return Stop::Io(e),
            Ok(Ok(len)) => u64::from(len),
        };
        poller.message(len as usize);
        if len > server.max_frame_bytes {
            refuse_oversized(
                &mut reader,
                &tx,
                len,
                server.max_frame_bytes,
                server.frame_timeout,
            )
            .await;
            return Stop::Protocol(format!(
                "frame of {len} bytes exceeds max_frame_bytes {}",
                server.max_frame_bytes
            ));
        }
        if len < REQUEST_HEADER_LEN as u64 {
            return Stop::Protocol(format!("frame of {len} bytes cannot hold a request header"));
        }
        // Charge the frame to the global budget before allocating it. The
        // broker's own wait for room does not count against the client.
        let waited = Instant::now();
        let budget = tokio::select! {
            p = Arc::clone(&broker.budget).acquire_many_owned(len as u32) => p.ok(),
            _ = shutdown.changed() => return Stop::Shutdown,
        };
        deadline += waited.elapsed();
        let frame = match timeout_at(deadline, read_body(&mut reader, len as usize)).await {
            Err(_) => {
                return Stop::Protocol(format!(
                    "frame of {len} bytes not completed within {:?}",
                    server.frame_timeout
                ))
            }
            Ok(Err(e)) => return Stop::Io(e),
            Ok(Ok(frame)) => frame,
        };
        // At least REQUEST_HEADER_LEN bytes: the header always parses, so
        // even a malformed body gets an answer with its correlation id.
        let Ok(header) = RequestHeader::parse(&frame) else {
            return Stop::Protocol("unreadable header".into());
        };
        let (charge, request) = match Request::parse(frame) {
            Ok((_, request)) => {
                let charge = match &request {
                    // A fetch returns at least one whole batch whatever its
                    // max_bytes, and a batch may be as large as a frame:
                    // charge the most it can return.
                    Request::Fetch { max_bytes, .. } => u64::from(*max_bytes)
                        .max(server.max_frame_bytes)
                        .min(server.max_queued_bytes),
                    _ => SMALL_RESPONSE,
                };
                (charge, Ok(request))
            }
            Err(e) => (SMALL_RESPONSE, Err(ErrorBody::new(e.code(), e.to_string()))),
        };
        // Room in this connection's response queue, or wait: a client that
        // does not read its responses stops being read.
        let queued = tokio::select! {
            p = Arc::clone(&queued).acquire_many_owned(charge.max(1) as u32) => p,
            _ = tx.closed() => return Stop::WriterGone,
        };
        let Ok(queued) = queued else {
            return Stop::WriterGone;
        };
        let reply = match request {
            Ok(request) => dispatch(broker, peer, header.correlation_id, request).await,
            Err(body) => Reply::Now(
                Response {
                    correlation_id: header.correlation_id,
                    body: Err(body),
                }
                .into(),
            ),
        };
        // Dispatched: the request's bytes are gone (a produce's batch is in
        // the log), so its share of max_inflight_bytes is free again, even
        // while its response waits behind a long poll.
        drop(budget);
        let outgoing = Outgoing { reply, queued };
        if tx.send(outgoing).await.is_err() {
            return Stop::WriterGone;
        }
    }
}

/// Reads exactly `len` bytes into a new buffer. The bytes are read into
/// spare capacity, never zeroed first.
async fn read_body(reader: &mut (impl AsyncRead + Unpin), len: usize) -> std::io::Result<BytesMut> {
    let mut frame = BytesMut::with_capacity(len);
    while frame.len() < len {
        let remaining = (len - frame.len()) as u64;
        if (&mut *reader).take(remaining).read_buf(&mut frame).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(frame)
}

/// Tells the client why its oversized frame is refused (using its
/// correlation id, if the header arrives in time) before the connection closes.
async fn refuse_oversized(
    reader: &mut (impl AsyncRead + Unpin),
    tx: &mpsc::Sender<Outgoing>,
    len: u64,
    max: u64,
    deadline: Duration,
) {
    let mut head = [0u8; REQUEST_HEADER_LEN];
    let Ok(Ok(_)) = timeout(
        // The header normally arrives with the prefix: do not wait long.
        deadline.min(Duration::from_millis(200)),
        reader.read_exact(&mut head),
    )
    .await
    else {
        return;
    };
    let Ok(header) = RequestHeader::parse(&head) else {
        return;
    };
    let body = ErrorBody::new(
        ErrorCode::RecordTooLarge,
        format!("frame of {len} bytes exceeds max_frame_bytes {max}"),
    );
    let response = Response {
        correlation_id: header.correlation_id,
        body: Err(body),
    };
    let queued = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("fresh semaphore");
    let _ = tx
        .send(Outgoing {
            reply: Reply::Now(response.into()),
            queued,
        })
        .await;
}

/// Writes responses in request order. Small responses gather in a buffer
/// that is flushed whenever no further response is ready; fetched batches go
/// to the socket from the buffers they were read into.
async fn write_responses(
    write_half: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Outgoing>,
    write_timeout: Duration,
) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, write_half);
    while let Some(item) = rx.recv().await {
        let answer = match item.reply {
            Reply::Nothing => None,
            Reply::Now(answer) => Some(answer),
            Reply::Later(task) => {
                if !task.is_finished()
                    && timeout(write_timeout, out.flush())
                        .await
                        .map_or(true, |r| r.is_err())
                {
                    return;
                }
                match task.await {
                    Ok(answer) => Some(answer),
                    Err(e) => {
                        tracing::error!(error = %e, "request task failed");
                        return;
                    }
                }
            }
        };
        if let Some(Answer { response, memory }) = answer {
            let parts = response.encode();
            let written = timeout(write_timeout, async {
                for part in &parts {
                    out.write_all(part).await?;
                }
                std::io::Result::Ok(())
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
            // Written (into the buffer or the socket): the batches it held
            // are the kernel's now.
            drop((parts, memory));
        }
        drop(item.queued);
        if rx.is_empty()
            && timeout(write_timeout, out.flush())
                .await
                .map_or(true, |r| r.is_err())
        {
            return;
        }
    }
    let _ = timeout(write_timeout, async {
        out.flush().await?;
        out.shutdown().await
    })
    .await;
}
