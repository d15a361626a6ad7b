//! Socket helpers shared by the broker and the client (feature `net`).

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Busy-polls `socket` for up to `window`, returning as soon as it has
/// something to read, has reached end of stream or has failed, or when the
/// window is over. The caller then reads as usual: this consumes nothing.
///
/// Why: a thread that sleeps in `epoll_wait` must be woken when the next
/// message lands, and on a VM whose idle CPUs halt, that wake-up is most of
/// a one-at-a-time round trip. Each probe is a non-blocking one-byte
/// `MSG_PEEK`; between probes the task yields, so every other task on the
/// thread (the peer's next request, this connection's writer) keeps running.
pub async fn poll_readable(socket: &TcpStream, window: Duration) {
    let probe = socket2::SockRef::from(socket);
    let mut byte = [MaybeUninit::uninit()];
    // Real time, not tokio's clock (which tests may pause): this bounds CPU.
    let until = Instant::now() + window;
    loop {
        tokio::task::yield_now().await;
        match probe.peek(&mut byte) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => return,
        }
        if Instant::now() >= until {
            return;
        }
    }
}
