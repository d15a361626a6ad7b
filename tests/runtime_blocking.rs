//! Issue 9, part 3: disk work that waits for the device never holds up a
//! broker's async worker. The broker runs on a runtime with a single worker
//! thread, on a file system whose reads or syncs can be held at a gate: while
//! one request waits there, another connection must still be answered.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::broker::{fetch_request, produce_request, Conn};
use common::wrap::WrapFs;
use spool::broker::{Broker, Config};
use spool::protocol::Request;
use spool::storage::{Mapping, OsVfs, VFile};

/// A gate that what it holds waits at until it opens.
#[derive(Default)]
struct Gate {
    hold_reads: AtomicBool,
    hold_syncs: AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
    /// Set when something waits at the gate.
    waiting: AtomicBool,
    /// Reads of store files, cached or not.
    reads: std::sync::atomic::AtomicU64,
}

impl Gate {
    fn wait(&self) {
        self.waiting.store(true, Ordering::Release);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

struct GateFile {
    inner: Arc<dyn VFile>,
    gate: Arc<Gate>,
    store: bool,
}

impl VFile for GateFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        if self.store {
            self.gate.reads.fetch_add(1, Ordering::Relaxed);
        }
        if self.store && self.gate.hold_reads.load(Ordering::Acquire) {
            self.gate.wait();
        }
        self.inner.read_at(pos, len)
    }
    fn read_at_nowait(&self, pos: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        if self.store {
            self.gate.reads.fetch_add(1, Ordering::Relaxed);
        }
        if self.store && self.gate.hold_reads.load(Ordering::Acquire) {
            // As if the pages were not in the page cache.
            return Ok(None);
        }
        self.inner.read_at_nowait(pos, len)
    }
    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(pos, data)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.store && self.gate.hold_syncs.load(Ordering::Acquire) {
            self.gate.wait();
        }
        self.inner.sync_data()
    }
    fn map(&self, len: usize, writable: bool) -> io::Result<Box<dyn Mapping>> {
        self.inner.map(len, writable)
    }
}

/// A broker on its own single-worker runtime, on a gated file system.
struct OneWorker {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl OneWorker {
    fn start(gate: &Arc<Gate>, edit: impl FnOnce(&mut Config)) -> OneWorker {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.kafka.listen = "127.0.0.1:0".into();
        config.server.data_dir = dir.path().to_owned();
        edit(&mut config);
        let gate = Arc::clone(gate);
        let vfs = WrapFs::shared(OsVfs::shared(), move |path, inner| {
            Arc::new(GateFile {
                inner,
                gate: Arc::clone(&gate),
                store: path.to_string_lossy().ends_with("store"),
            })
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let running = Broker::start_with(config, vfs).await.unwrap();
                addr_tx.send(running.local_addr()).unwrap();
                let _ = stopped.await;
                running.shutdown().await;
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        OneWorker {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for OneWorker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection to the broker, and topic `t` (flush `never`) created.
async fn with_topic(broker: &OneWorker) -> Conn {
    let mut c = Conn::connect(broker.addr).await;
    c.ok(Request::CreateTopic {
        topic: "t".into(),
        settings: vec![("flush".into(), "never".into())],
    })
    .await;
    c
}

/// Waits, bounded, until something waits at the gate.
async fn until_held(gate: &Gate) {
    for _ in 0..2000 {
        if gate.waiting.load(Ordering::Acquire) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("nothing reached the gate");
}

/// Whether another connection is answered while something waits at the gate.
async fn answered_meanwhile(addr: std::net::SocketAddr) -> bool {
    let mut other = Conn::connect(addr).await;
    other.send(&Request::ListTopics).await;
    matches!(
        tokio::time::timeout(Duration::from_secs(5), other.read_frame()).await,
        Ok(Some(_))
    )
}

#[tokio::test]
async fn a_fetch_of_data_not_in_the_page_cache_does_not_hold_up_the_worker() {
    let gate = Arc::new(Gate::default());
    // No tail cache: with io = "direct" the fetch would be served from
    // memory and never reach the file.
    let broker = OneWorker::start(&gate, |c| c.storage.cache_bytes = 0);
    let mut c = with_topic(&broker).await;
    c.produce("t", &[b"cold"]).await;
    gate.hold_reads.store(true, Ordering::Release);
    c.send(&fetch_request("t", 0, 0)).await;
    until_held(&gate).await;
    let meanwhile = answered_meanwhile(broker.addr).await;
    gate.release();
    match c.recv().await.fetched() {
        Ok(f) => {
            let records = common::broker::decode(&f.batches, 0);
            assert_eq!(records[0].value.as_deref().unwrap(), b"cold");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        meanwhile,
        "a read waiting for the device held up the only worker"
    );
}

#[tokio::test]
async fn a_roll_whose_seal_waits_for_the_device_does_not_hold_up_the_worker() {
    let gate = Arc::new(Gate::default());
    let broker = OneWorker::start(&gate, |c| {
        c.defaults.segment_bytes = Some(1024);
    });
    let mut c = with_topic(&broker).await;
    // Every fdatasync of a store waits at the gate: the seal the first
    // roll leaves for later, and the one the next roll must do first.
    gate.hold_syncs.store(true, Ordering::Release);
    let value = [7u8; 600];
    let mut produced = 0;
    for _ in 0..6 {
        c.send(&produce_request("t", &[&value])).await;
        produced += 1;
    }
    until_held(&gate).await;
    let meanwhile = answered_meanwhile(broker.addr).await;
    gate.release();
    for _ in 0..produced {
        let produced = c.recv().await.produced();
        assert!(produced.is_ok(), "{produced:?}");
    }
    assert!(
        meanwhile,
        "a roll waiting for an fdatasync held up the only worker"
    );
}

// 2: a waiting fetch re-read and re-checked its data on every append. It
// counts the bytes available from index positions now, and reads once.
#[tokio::test]
async fn a_waiting_fetch_reads_once_however_many_appends_wake_it() {
    let gate = Arc::new(Gate::default());
    let broker = OneWorker::start(&gate, |_| {});
    let mut c = with_topic(&broker).await;
    c.produce("t", &[b"first"]).await;
    // Wants 50 KiB: 500 appends of 100 bytes wake it before it has them.
    let mut waiting = Conn::connect(broker.addr).await;
    waiting
        .send(&Request::fetch("t", 0, 0, 1 << 20, 60_000, 50 * 1024))
        .await;
    // Whenever the broker parks it, it reads nothing until the bytes are
    // there.
    let before = gate.reads.load(Ordering::Relaxed);
    let value = [1u8; 100];
    for _ in 0..500 {
        c.produce("t", &[&value]).await;
    }
    match waiting.recv().await.fetched() {
        Ok(f) => {
            assert!(common::broker::decode(&f.batches, 0).len() > 300);
        }
        other => panic!("{other:?}"),
    }
    let reads = gate.reads.load(Ordering::Relaxed) - before;
    assert!(
        reads <= 10,
        "{reads} reads of the store for one waiting fetch woken by 500 appends"
    );
}
