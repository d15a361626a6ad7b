//! The direct-I/O writer's memory: aligned chunks that are first its write
//! buffer and then, once written, the tail cache readers are served from.
//!
//! # Why chunks
//!
//! With `io = "direct"` a store is written with `O_DIRECT`, which needs
//! block-aligned buffers, positions and lengths ([`BLOCK`] = 4096 bytes).
//! The writer copies each batch into the current [`Chunk`], a block-aligned
//! piece of memory that mirrors the file range `[start, start + cap)`, and
//! writes the blocks it touched straight from there; the last, partial block
//! is zero-padded on the way out and written again, whole, by the next
//! flush. A chunk is never copied again: once written it stays readable, so
//! a consumer that keeps up with the producer reads from memory and the
//! file is never read back.
//!
//! # The budget
//!
//! [`TailCache`] is one budget (`[storage] cache_bytes`) shared by every
//! store that registers chunks with it. Chunks are registered as the writers
//! start them, in that order; when the registered total passes the budget
//! the oldest are dropped from their stores' lists, so reads of them go to
//! the file (every byte a reader may ask for was written before it was
//! published). Freed chunks of the common sizes go to a small pool and are
//! reused: memory a process has touched once stays in the VM, where fresh
//! memory costs a host page fault per page, which is what made the page
//! cache slow to write into in the first place.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Alignment and granularity of direct writes: the largest logical block
/// size a Linux block device has, so every device accepts it.
pub const BLOCK: u64 = 4096;

/// The first chunk of a writer; each next one is twice the last, up to
/// [`MAX_CHUNK`], so an idle partition holds little memory and a busy one
/// writes large pieces.
pub(crate) const MIN_CHUNK: usize = 64 << 10;
pub(crate) const MAX_CHUNK: usize = 4 << 20;
/// Most bytes of freed chunks kept for reuse.
const POOL_BYTES: usize = 64 << 20;

pub(crate) fn round_down(x: u64) -> u64 {
    x & !(BLOCK - 1)
}

pub(crate) fn round_up(x: u64) -> u64 {
    x.div_ceil(BLOCK) * BLOCK
}

/// Block-aligned heap memory.
struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the buffer is plain memory owned by this value; access is
// coordinated by `Chunk` (one writer on bytes no reader may read).
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, BLOCK as usize).expect("a power-of-two alignment")
    }

    fn new(cap: usize) -> AlignedBuf {
        if let Some(buf) = pool_take(cap) {
            return buf;
        }
        // SAFETY: cap is non-zero (at least MIN_CHUNK) and the layout valid.
        let ptr = unsafe { alloc::alloc_zeroed(Self::layout(cap)) };
        if ptr.is_null() {
            alloc::handle_alloc_error(Self::layout(cap));
        }
        AlignedBuf { ptr, cap }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr, Self::layout(self.cap)) }
    }
}

static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

fn pool_take(cap: usize) -> Option<AlignedBuf> {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let i = pool.iter().position(|b| b.cap == cap)?;
    Some(pool.swap_remove(i))
}

fn pool_put(buf: AlignedBuf) {
    if buf.cap > MAX_CHUNK {
        return; // a one-off size for one large batch
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.iter().map(|b| b.cap).sum::<usize>() + buf.cap <= POOL_BYTES {
        pool.push(buf);
    }
}

/// A block-aligned piece of memory mirroring the store's bytes
/// `[start, start + cap)`. One writer fills it front to back; readers read
/// what it has filled. The two never touch the same bytes: a reader asks
/// only for bytes below the store's published end, which are below
/// `filled`, and the writer only writes at or after `filled`.
pub(crate) struct Chunk {
    /// File position of the first byte; a multiple of [`BLOCK`].
    start: u64,
    buf: Option<AlignedBuf>,
    /// Bytes from `start` holding the store's data (release-stored by the
    /// writer after it copied them).
    filled: AtomicUsize,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool_put(buf);
        }
    }
}

impl Chunk {
    /// A chunk of at least `cap` bytes (rounded up to blocks) at `start`.
    pub fn new(start: u64, cap: usize) -> Chunk {
        debug_assert_eq!(start % BLOCK, 0);
        let cap = round_up(cap as u64) as usize;
        Chunk {
            start,
            buf: Some(AlignedBuf::new(cap)),
            filled: AtomicUsize::new(0),
        }
    }

    fn buf(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("taken only in drop")
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn cap(&self) -> usize {
        self.buf().cap
    }

    /// File position after the last byte it holds.
    pub fn filled_end(&self) -> u64 {
        self.start + self.filled.load(Ordering::Acquire) as u64
    }

    /// Copies `bytes` in at `at` (from `start`) and counts them filled.
    ///
    /// # Safety
    /// Only the chunk's one writer may call this, with `at` at or after
    /// what is filled, and `at + bytes.len() <= cap`: no reader reads there.
    pub unsafe fn fill(&self, at: usize, bytes: &[u8]) {
        let buf = self.buf();
        assert!(at + bytes.len() <= buf.cap, "fill past the chunk");
        // SAFETY: in bounds (checked), and no one else touches these bytes
        // (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.ptr.add(at), bytes.len()) };
        self.filled.store(at + bytes.len(), Ordering::Release);
    }

    /// Counts only the first `to` bytes filled (after a failed write, the
    /// bytes after it are dropped and written again).
    ///
    /// # Safety
    /// The writer only, with `to` at or above the published end.
    pub unsafe fn unfill(&self, to: usize) {
        self.filled.store(to, Ordering::Release);
    }

    /// Zeroes `[at, to)`: the padding of the last block before it is
    /// written.
    ///
    /// # Safety
    /// As for [`Chunk::fill`]: the writer's bytes, at or after `filled`.
    pub unsafe fn zero(&self, at: usize, to: usize) {
        let buf = self.buf();
        assert!(at <= to && to <= buf.cap, "zero past the chunk");
        // SAFETY: in bounds (checked); the caller's contract excludes readers.
        unsafe { std::ptr::write_bytes(buf.ptr.add(at), 0, to - at) };
    }

    /// The bytes `[from, to)` (from `start`), for the writer's `pwrite`.
    ///
    /// # Safety
    /// The writer only, while it writes nothing into the chunk: readers may
    /// share the bytes below `filled`, no one mutates any of them.
    pub unsafe fn bytes(&self, from: usize, to: usize) -> &[u8] {
        let buf = self.buf();
        assert!(from <= to && to <= buf.cap, "bytes past the chunk");
        // SAFETY: in bounds (checked); nothing writes them meanwhile.
        unsafe { std::slice::from_raw_parts(buf.ptr.add(from), to - from) }
    }

    /// Appends to `out` the store's bytes `[pos, end)`, which must be filled.
    fn copy_out(&self, pos: u64, end: u64, out: &mut Vec<u8>) {
        let filled = self.filled.load(Ordering::Acquire) as u64;
        assert!(
            pos >= self.start && end <= self.start + filled,
            "read outside a chunk"
        );
        let from = (pos - self.start) as usize;
        let len = (end - pos) as usize;
        // SAFETY: [from, from + len) is below `filled` (checked): bytes the
        // writer has released and will not write again.
        let bytes = unsafe { std::slice::from_raw_parts(self.buf().ptr.add(from), len) };
        out.extend_from_slice(bytes);
    }
}

/// The chunks of one store that readers may use, in file order.
pub(crate) struct StoreChunks {
    cache: Option<TailCache>,
    list: RwLock<Vec<Arc<Chunk>>>,
}

impl StoreChunks {
    pub fn new(cache: Option<TailCache>) -> Arc<StoreChunks> {
        Arc::new(StoreChunks {
            cache,
            list: RwLock::new(Vec::new()),
        })
    }

    /// Makes a chunk the writer started readable, and counts it against the
    /// shared budget (which may evict older chunks, this store's or
    /// others'). Without a budget only the newest chunk is kept.
    pub fn add(self: &Arc<Self>, chunk: &Arc<Chunk>) {
        {
            let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
            if self.cache.is_none() {
                list.clear();
            }
            list.push(Arc::clone(chunk));
        }
        if let Some(cache) = &self.cache {
            cache.register(self, chunk);
        }
    }

    /// Drops `chunk` from the list; whether it was there.
    fn remove(&self, chunk: &Arc<Chunk>) -> bool {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        match list.iter().position(|c| Arc::ptr_eq(c, chunk)) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    /// The store's bytes `[pos, pos + len)` if chunks hold all of them.
    pub fn read(&self, pos: u64, len: usize) -> Option<Vec<u8>> {
        let end = pos.checked_add(len as u64)?;
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        // Most reads are of the newest bytes: find the first chunk that
        // could hold `pos` from the back.
        let first = list.iter().rposition(|c| c.start() <= pos)?;
        let mut out = Vec::with_capacity(len);
        let mut at = pos;
        for chunk in &list[first..] {
            if at == end {
                break;
            }
            let filled = chunk.filled_end();
            if chunk.start() > at || filled <= at {
                break; // a gap: an evicted chunk, or bytes not filled
            }
            let to = filled.min(end);
            chunk.copy_out(at, to, &mut out);
            at = to;
        }
        (at == end).then_some(out)
    }
}

impl Drop for StoreChunks {
    fn drop(&mut self) {
        if let Some(cache) = &self.cache {
            let list = self.list.get_mut().unwrap_or_else(|p| p.into_inner());
            cache.release(list.iter().map(|c| c.cap() as u64).sum());
        }
    }
}

/// A budget of memory for recently written chunks, shared by the stores
/// that register with it (all the partitions of a broker). Cloning shares
/// it; two handles are equal when they share one budget.
#[derive(Clone)]
pub struct TailCache(Arc<Budget>);

struct Budget {
    bytes: u64,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    used: u64,
    /// Registered chunks, oldest first; entries whose store or chunk is
    /// gone are skipped when they come up.
    order: VecDeque<(Weak<StoreChunks>, Weak<Chunk>)>,
}

impl TailCache {
    /// A budget of `bytes`; 0 keeps no chunk beyond the ones being written.
    pub fn new(bytes: u64) -> TailCache {
        TailCache(Arc::new(Budget {
            bytes,
            state: Mutex::new(BudgetState::default()),
        }))
    }

    /// Bytes of chunks readable now.
    pub fn used(&self) -> u64 {
        self.state().used
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, store: &Arc<StoreChunks>, chunk: &Arc<Chunk>) {
        let mut evicted = Vec::new();
        {
            let mut s = self.state();
            s.used += chunk.cap() as u64;
            s.order
                .push_back((Arc::downgrade(store), Arc::downgrade(chunk)));
            while s.used > self.0.bytes {
                let Some((store, chunk)) = s.order.pop_front() else {
                    break;
                };
                if let (Some(store), Some(chunk)) = (store.upgrade(), chunk.upgrade()) {
                    if store.remove(&chunk) {
                        s.used -= chunk.cap() as u64;
                        // Dropped outside the lock: the last reference may
                        // return it to the pool.
                        evicted.push(chunk);
                    }
                }
            }
            // Entries of stores long gone would pile up under a budget that
            // is never reached: sweep them now and then.
            if s.order.len() > 4096 && s.order.len().is_power_of_two() {
                s.order
                    .retain(|(st, c)| st.strong_count() > 0 && c.strong_count() > 0);
            }
        }
        drop(evicted);
    }

    fn release(&self, bytes: u64) {
        let mut s = self.state();
        s.used = s.used.saturating_sub(bytes);
    }
}

impl PartialEq for TailCache {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TailCache {}

impl std::fmt::Debug for TailCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailCache")
            .field("budget", &self.0.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(start: u64, bytes: &[u8]) -> Arc<Chunk> {
        let c = Arc::new(Chunk::new(start, bytes.len().max(1)));
        // SAFETY: a fresh chunk, filled by this thread only.
        unsafe { c.fill(0, bytes) };
        c
    }

    #[test]
    fn reads_span_chunks_and_stop_at_gaps() {
        let store = StoreChunks::new(Some(TailCache::new(1 << 30)));
        let a = filled(0, &[1u8; 5000]);
        // The next chunk starts at the block the first one ended in, with
        // that block's bytes copied over.
        let mut tail = vec![1u8; 5000 - 4096];
        tail.extend_from_slice(&[2u8; 100]);
        let b = filled(4096, &tail);
        store.add(&a);
        store.add(&b);
        let r = store.read(4000, 1050).expect("both chunks");
        assert_eq!(&r[..1000], &[1u8; 1000][..]);
        assert_eq!(&r[1000..], &[2u8; 50][..]);
        assert_eq!(
            store.read(4500, 600).unwrap().len(),
            600,
            "from the newer chunk"
        );
        assert!(store.read(5000, 200).is_none(), "past what is filled");
        assert!(store.read(4095, 0).is_some());
    }

    #[test]
    fn the_budget_evicts_the_oldest_chunks_of_any_store() {
        let cache = TailCache::new(3 * MIN_CHUNK as u64);
        let one = StoreChunks::new(Some(cache.clone()));
        let two = StoreChunks::new(Some(cache.clone()));
        let chunks: Vec<_> = (0..4)
            .map(|i| filled(i * MIN_CHUNK as u64, &vec![i as u8; MIN_CHUNK]))
            .collect();
        one.add(&chunks[0]);
        two.add(&chunks[1]);
        one.add(&chunks[2]);
        assert_eq!(cache.used(), 3 * MIN_CHUNK as u64);
        two.add(&chunks[3]);
        assert_eq!(cache.used(), 3 * MIN_CHUNK as u64);
        assert!(one.read(0, 10).is_none(), "the oldest went");
        assert_eq!(
            one.read(2 * MIN_CHUNK as u64, 10),
            Some(vec![2u8; 10]),
            "the newer stayed"
        );
        drop(two);
        assert_eq!(
            cache.used(),
            MIN_CHUNK as u64,
            "a dropped store gives back its chunks"
        );
    }

    #[test]
    fn without_a_budget_only_the_newest_chunk_is_readable() {
        let store = StoreChunks::new(None);
        store.add(&filled(0, &[1u8; 10]));
        store.add(&filled(4096, &[2u8; 10]));
        assert!(store.read(0, 10).is_none());
        assert_eq!(store.read(4096, 10), Some(vec![2u8; 10]));
    }
}
