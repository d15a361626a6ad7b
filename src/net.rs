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
///
/// Returns whether the socket became readable (or ended) within the window.
pub async fn poll_readable(socket: &TcpStream, window: Duration) -> bool {
    let probe = socket2::SockRef::from(socket);
    let mut byte = [MaybeUninit::uninit()];
    // Real time, not tokio's clock (which tests may pause): this bounds CPU.
    let until = Instant::now() + window;
    loop {
        tokio::task::yield_now().await;
        match probe.peek(&mut byte) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => return true,
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

/// Whether a connection busy-polls its socket before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPoll {
    /// Never: sleep at once.
    Off,
    /// Always, this long.
    Fixed(Duration),
    /// Only while messages arrive faster than this (its recent gaps, see
    /// [`Poller`]), for about twice the recent gap; idle and slow
    /// connections never spin.
    Adaptive(Duration),
}

impl BusyPoll {
    /// The default: adaptive, for gaps up to [`BusyPoll::ADAPTIVE_MAX`].
    pub const AUTO: BusyPoll = BusyPoll::Adaptive(BusyPoll::ADAPTIVE_MAX);
    /// A thread's wake-up on these VMs costs some tens of microseconds:
    /// messages more than this apart gain little from a poll, and polling
    /// for them would keep a CPU busy for nothing.
    pub const ADAPTIVE_MAX: Duration = Duration::from_micros(200);

    /// `Off` for a zero duration, `Fixed` otherwise.
    pub fn fixed(window: Duration) -> BusyPoll {
        if window.is_zero() {
            BusyPoll::Off
        } else {
            BusyPoll::Fixed(window)
        }
    }
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll::AUTO
    }
}

impl std::fmt::Display for BusyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusyPoll::Off => f.write_str("off"),
            BusyPoll::Fixed(d) => write!(f, "{d:?}"),
            BusyPoll::Adaptive(d) => write!(f, "auto (gaps up to {d:?})"),
        }
    }
}

/// Empty polls in a row after which an adaptive poller stops polling until
/// a message comes quickly again.
const MAX_MISSES: u8 = 3;
/// After a message larger than this an adaptive poller sleeps: a large
/// message is a bulk transfer, whose wake-up is paid for by its size, and
/// spinning for the next one would take a CPU from the peer sending it
/// (measured on 2 cores: bulk produce and consume 17 to 20% slower).
pub const LARGE_MESSAGE: usize = 64 << 10;
/// The shortest adaptive window: below it a poll barely starts.
const MIN_WINDOW: Duration = Duration::from_micros(20);

/// One connection's busy-polling, by [`BusyPoll`]. Call
/// [`Poller::before_wait`] when nothing is buffered and the connection is
/// about to wait for the next message, and [`Poller::arrived`] when bytes
/// came. An adaptive poller keeps a moving average of the gaps (from the
/// start of a wait to the bytes), polls for twice it while it is at most
/// the limit, and stops after [`MAX_MISSES`] empty polls until a gap is
/// short again: a connection sending once a second never spins.
#[derive(Debug)]
pub struct Poller {
    mode: BusyPoll,
    /// Moving average of recent gaps (a quarter weight for each new one).
    gap: Duration,
    misses: u8,
    waiting_since: Option<Instant>,
    /// The last message was larger than [`LARGE_MESSAGE`].
    after_large: bool,
}

impl Poller {
    pub fn new(mode: BusyPoll) -> Poller {
        let gap = match mode {
            // Sleep until a few short gaps have shown that polling pays:
            // a connection that sends once a second never polls at all
            // (polling from the start cost 100 such connections 40 ms of
            // CPU each time they connected).
            BusyPoll::Adaptive(max) => max * 2,
            _ => Duration::ZERO,
        };
        Poller {
            mode,
            gap,
            misses: 0,
            waiting_since: None,
            after_large: false,
        }
    }

    /// A whole message of `len` bytes was read (see [`LARGE_MESSAGE`]).
    pub fn message(&mut self, len: usize) {
        self.after_large = len > LARGE_MESSAGE;
    }

    /// Polls `socket` if this connection's mode and recent gaps call for it.
    pub async fn before_wait(&mut self, socket: &TcpStream) {
        self.waiting_since = Some(Instant::now());
        match self.mode {
            BusyPoll::Off => {}
            BusyPoll::Fixed(window) => {
                poll_readable(socket, window).await;
            }
            BusyPoll::Adaptive(max) => {
                if let Some(window) = self.window(max) {
                    if poll_readable(socket, window).await {
                        self.misses = 0;
                    } else {
                        self.misses = self.misses.saturating_add(1);
                    }
                }
            }
        }
    }

    /// How long an adaptive poller would poll now, if at all.
    fn window(&self, max: Duration) -> Option<Duration> {
        (!self.after_large && self.misses < MAX_MISSES && self.gap <= max)
            .then(|| (self.gap * 2).clamp(MIN_WINDOW, max))
    }

    /// Bytes arrived after a wait: counts the gap.
    pub fn arrived(&mut self) {
        let (Some(since), BusyPoll::Adaptive(max)) = (self.waiting_since.take(), self.mode) else {
            return;
        };
        // Capped: after an idle spell a few quick gaps bring polling back.
        let gap = since.elapsed().min(max * 2);
        self.gap = (self.gap * 3 + gap) / 4;
        if gap <= max {
            // Messages come quickly again: polling pays.
            self.misses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poller fed gaps by hand (no socket): what it would do.
    fn fed(gaps_us: &[u64]) -> Poller {
        let mut p = Poller::new(BusyPoll::AUTO);
        for &g in gaps_us {
            p.waiting_since = Some(Instant::now() - Duration::from_micros(g));
            p.arrived();
        }
        p
    }

    #[test]
    fn fast_messages_are_polled_for_and_slow_ones_are_not() {
        let max = BusyPoll::ADAPTIVE_MAX;
        let fast = fed(&[30; 20]);
        let w = fast.window(max).expect("polls");
        assert!(w >= MIN_WINDOW && w <= Duration::from_micros(100), "{w:?}");
        // A new connection sleeps until its gaps prove short.
        assert_eq!(Poller::new(BusyPoll::AUTO).window(max), None);
        assert!(fed(&[30; 4]).window(max).is_some());
        // Once a second: no polling at all.
        assert_eq!(fed(&[1_000_000; 3]).window(max), None);
        // A burst after idleness: polling resumes once gaps are short.
        let mut back = fed(&[1_000_000, 1_000_000, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30]);
        assert!(back.window(max).is_some());
        // Empty polls in a row stop it.
        back.misses = MAX_MISSES;
        assert_eq!(back.window(max), None);
        back.waiting_since = Some(Instant::now());
        back.arrived();
        assert!(back.window(max).is_some(), "a short gap resumes polling");
        // A bulk message: no polling for the next one, however quick.
        back.message(LARGE_MESSAGE + 1);
        assert_eq!(back.window(max), None);
        back.message(100);
        assert!(back.window(max).is_some());
    }

    #[test]
    fn off_and_fixed_do_not_adapt() {
        let mut p = Poller::new(BusyPoll::Off);
        p.waiting_since = Some(Instant::now());
        p.arrived();
        assert_eq!(p.gap, Duration::ZERO);
        assert_eq!(BusyPoll::fixed(Duration::ZERO), BusyPoll::Off);
        assert_eq!(
            BusyPoll::fixed(Duration::from_micros(5)),
            BusyPoll::Fixed(Duration::from_micros(5))
        );
    }
}
