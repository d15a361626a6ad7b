//! Topics: settings and partitions, each partition a log plus what the
//! broker needs around it (long-poll and durability notifications, a
//! background sync task); and the registry of all topics.
//!
//! # Directory
//!
//! ```text
//! <data_dir>/topics/<name>/topic.toml         settings given at creation (key = "value")
//! <data_dir>/topics/<name>/<p>/0000….store    partition p's log (p = 0, 1, ...; docs/STORAGE.md)
//! <data_dir>/deleted/<unix ms>.<n>/           a deleted topic on its way out
//! ```
//!
//! A topic name is 1 to 249 characters of `[A-Za-z0-9._-]` and not `.` or
//! `..`; it is checked before it ever becomes part of a path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use thiserror::Error;
use tokio::sync::{watch, Notify};

use super::config::{Config, Flush, TopicOverrides, TopicSettings};
use crate::storage::{Appended, Log, Open, OsVfs, Retention, StorageError, TailCache, Vfs};

/// The file holding a topic's creation settings.
const SETTINGS_FILE: &str = "topic.toml";
/// Largest settings file read: a few settings take a few hundred bytes.
const MAX_SETTINGS_FILE: u64 = 64 * 1024;

/// Why a topic operation failed.
#[derive(Debug, Error)]
pub enum TopicError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("topic {0:?} does not exist")]
    Unknown(String),
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    /// The topic's directory is there but could not be opened at start; its
    /// files are left exactly as they were, for an operator to look at.
    #[error("topic {name:?} could not be opened at start and is not served: {reason} (its files are left as they are; fix or move its directory, then restart)")]
    Broken { name: String, reason: String },
    #[error(
        "cannot create topic {name:?}: the broker holds its maximum of {max} topics (max_topics)"
    )]
    TooMany { name: String, max: usize },
    #[error("topic {name:?} needs {asked} more partitions, but the broker holds {held} of its maximum {max} (max_partitions)")]
    TooManyPartitions {
        name: String,
        asked: usize,
        held: usize,
        max: usize,
    },
    #[error("invalid settings for topic {name:?}: {reason}")]
    InvalidConfig { name: String, reason: String },
    #[error("topic {name:?}: {source}")]
    Storage {
        name: String,
        #[source]
        source: StorageError,
    },
    #[error("topic {name:?}: {op} {path}: {source}")]
    Io {
        name: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks a topic name; only a name that passes ever becomes a path.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 249 {
        return Err("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only A-Z, a-z, 0-9, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Where the durable prefix of a `flush = "always"` partition stands.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every offset below this is synced.
    pub synced: u64,
    /// Set once a sync failed; the partition acknowledges nothing after that.
    pub failed: Option<Arc<str>>,
}

/// A topic's settings, what it was given, and where each value comes from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub effective: TopicSettings,
    /// Given at creation, as changed by alters since (kept in `topic.toml`).
    pub given: TopicOverrides,
    /// `(key, source)` for each setting (see [`Config::setting_sources`]).
    pub sources: Vec<(String, String)>,
}

/// One partition of a topic: a log of its own, with its own offsets,
/// retention, recovery and sync, and what the broker needs around it.
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    log: Log,
    /// Fixed while the topic is open (the sync task and the acknowledgement
    /// path are built around them), read on every produce without a lock.
    flush: Flush,
    flush_interval: Duration,
    /// The end of what consumers may read: the log's end, or for
    /// `flush = "always"` the end of what is synced, so that nobody reads a
    /// record a power cut could take back. Long-polling fetches wait on it.
    visible: watch::Sender<u64>,
    /// For `flush = "always"`: the synced prefix, advanced by the sync task.
    durable: watch::Sender<Durable>,
    /// Wakes the sync task.
    sync_wanted: Notify,
    closed: AtomicBool,
    /// Wakes the sync task to exit, and long-polls to return.
    closing: Notify,
    /// Set after a roll: the background task has work for this partition.
    needs_care: AtomicBool,
    /// Wakes the background task (shared by every partition).
    care: Arc<Notify>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("log", &self.log)
            .finish()
    }
}

impl Partition {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn flush(&self) -> Flush {
        self.flush
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Appends a batch (blocking: a `write(2)` to the page cache) and wakes
    /// waiting fetches. The batch is in the kernel when this returns.
    pub fn append(&self, batch: &mut [u8]) -> Result<Appended, StorageError> {
        self.append_within(batch, crate::batch::MAX_DECOMPRESSED)
    }

    /// [`Partition::append`] with a bound on what a compressed batch's
    /// records may decompress to (see [`Log::append_within`]).
    pub fn append_within(
        &self,
        batch: &mut [u8],
        max_decompressed: usize,
    ) -> Result<Appended, StorageError> {
        let appended = self.log.append_within(batch, max_decompressed)?;
        if appended.rolled {
            // The roll was a swap; the background task seals the segment it
            // rolled away from, makes the next one ready, and applies
            // retention at once (so that the partition never overshoots
            // retention_bytes by more than about a segment, whatever
            // retention_check_interval is).
            self.needs_care.store(true, Ordering::Release);
            self.care.notify_one();
        }
        if self.flush != Flush::Always {
            // Appends on two threads can reach this out of order: only ever
            // move the end forward.
            self.advance_visible(appended.next_offset);
        }
        Ok(appended)
    }

    fn advance_visible(&self, end: u64) {
        self.visible.send_if_modified(|v| {
            let moved = end > *v;
            *v = (*v).max(end);
            moved
        });
    }

    /// The end of what consumers may read (see `visible`).
    pub fn visible_end(&self) -> u64 {
        *self.visible.borrow()
    }

    /// Asks the sync task for a sync soon (`flush = "always"`), without waiting.
    pub fn request_sync(&self) {
        if self.flush == Flush::Always {
            self.sync_wanted.notify_one();
        }
    }

    /// Waits until offsets below `next_offset` are as durable as the topic's
    /// flush mode promises before an acknowledgement.
    pub async fn committed(&self, next_offset: u64) -> Result<(), StorageError> {
        if self.flush != Flush::Always {
            return Ok(());
        }
        let mut durable = self.durable.subscribe();
        self.sync_wanted.notify_one();
        let state = durable
            .wait_for(|d| d.synced >= next_offset || d.failed.is_some())
            .await
            .map_err(|_| StorageError::Closed)?;
        match &state.failed {
            // Deleted while it waited: the topic is gone, not broken.
            Some(_) if state.synced < next_offset && self.is_closed() => Err(StorageError::Closed),
            Some(reason) if state.synced < next_offset => Err(StorageError::Fenced {
                reason: reason.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// A receiver of the visible end, for long polling.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// Resolves once the partition is closing (topic deleted or broker
    /// shutdown).
    pub async fn closing(&self) {
        let notified = self.closing.notified();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Drives the log's durability from the runtime. The log is the one
    /// engine: it decides what a sync covers, shares one fdatasync among
    /// concurrent callers (group commit), remembers a failure for good, and
    /// knows what is durable. This task only calls it off the async threads
    /// (on demand for `flush = "always"`, every `flush_interval_ms` for
    /// `flush = "interval"`) and publishes what it reports, to release
    /// waiting produces and (for `always`) make records visible.
    async fn run_sync_task(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let periodic = self.flush == Flush::Interval;
        loop {
            tokio::select! {
                _ = self.sync_wanted.notified() => {}
                _ = tick.tick(), if periodic => {}
                _ = self.closing() => return,
            }
            let target = self.log.next_offset();
            if target <= self.log.synced_offset() {
                self.publish_synced(target);
                continue;
            }
            let partition = Arc::clone(&self);
            let result =
                tokio::task::spawn_blocking(move || partition.log.sync_through(target)).await;
            match result {
                Ok(Ok(())) => self.publish_synced(self.log.synced_offset()),
                Ok(Err(e)) => {
                    tracing::error!(topic = %self.topic, partition = self.id, error = %e, "sync failed; the partition acknowledges no more produces");
                    self.durable
                        .send_modify(|d| d.failed = Some(e.to_string().into()));
                    return;
                }
                Err(e) => {
                    self.durable
                        .send_modify(|d| d.failed = Some(format!("sync task failed: {e}").into()));
                    return;
                }
            }
        }
    }

    /// Offsets below `target` are synced: acknowledge them, and (for
    /// `flush = "always"`) let consumers see them.
    fn publish_synced(&self, target: u64) {
        if self.flush == Flush::Always {
            // Visible before acknowledged: a consumer told of the ack by its
            // producer must find the record.
            self.advance_visible(target);
            self.durable
                .send_modify(|d| d.synced = d.synced.max(target));
        }
    }

    /// Applies retention and age-based rolls, and does what a roll left
    /// (blocking).
    fn maintain(&self, settings: &TopicSettings, now_ms: i64) -> Result<(), StorageError> {
        let first = self.after_roll(settings, now_ms);
        if self.log.roll_if_due(now_ms)? {
            tracing::debug!(topic = %self.topic, partition = self.id, "rolled segment by age");
            // The segment that just rolled away may already be past
            // retention_ms.
            self.after_roll(settings, now_ms)?;
        }
        first
    }

    /// What follows a roll, off the append path (blocking): the segment
    /// rolled away from is sealed, the next one made ready, retention
    /// applied.
    fn after_roll(&self, settings: &TopicSettings, now_ms: i64) -> Result<(), StorageError> {
        // Retention first, whatever else fails: on a full disk the next
        // segment cannot be made, and retention is what frees the space.
        let retained = self.apply_retention(settings, now_ms);
        let prepared = self.log.prepare();
        retained.and(prepared)
    }

    /// Deletes the oldest segments while the partition is over
    /// retention_bytes or they are past retention_ms (blocking).
    fn apply_retention(&self, settings: &TopicSettings, now_ms: i64) -> Result<(), StorageError> {
        if settings.retention_bytes.is_none() && settings.retention_ms.is_none() {
            return Ok(());
        }
        let policy = Retention {
            max_bytes: settings.retention_bytes,
            max_age: settings.retention_ms,
        };
        let removed = self.log.apply_retention(policy, now_ms)?;
        if removed.segments > 0 {
            tracing::info!(
                topic = %self.topic,
                partition = self.id,
                segments = removed.segments,
                bytes = removed.bytes,
                log_start = self.log.lowest_offset(),
                "retention deleted segments"
            );
        }
        Ok(())
    }

    /// Stops the partition without a sync (its files are going away, or
    /// never served): the sync task exits, long polls return, waiting
    /// produces fail, the log appends no more.
    fn stop(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        self.log.discard();
        self.durable
            .send_modify(|d| d.failed = Some("the topic was deleted".into()));
    }

    /// Stops the sync task and wakes long polls; then closes the log
    /// (blocking: flush, sync, trim the index).
    fn close(&self) -> Result<(), StorageError> {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        let result = self.log.close();
        let synced = self.log.next_offset();
        if result.is_ok() {
            // Everything is synced by close: release waiting producers.
            self.advance_visible(synced);
            self.durable
                .send_modify(|d| d.synced = d.synced.max(synced));
        } else if let Err(e) = &result {
            self.durable
                .send_modify(|d| d.failed = Some(e.to_string().into()));
        }
        result
    }
}

/// One topic: its settings and its partitions.
pub struct Topic {
    name: Arc<str>,
    /// The settings in effect, which ALTER_TOPIC may change.
    state: Mutex<Settings>,
    /// Partitions 0, 1, ...; ALTER_TOPIC may add some (never remove one).
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("partitions", &self.partition_count())
            .finish()
    }
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings in effect now.
    pub fn settings(&self) -> TopicSettings {
        self.current().effective
    }

    /// The settings in effect, those given at creation or by an alter, and
    /// where each comes from.
    pub fn current(&self) -> Settings {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every partition, in order.
    pub fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        Arc::clone(&self.partitions.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn partition(&self, id: u32) -> Option<Arc<Partition>> {
        self.partitions().get(id as usize).cloned()
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions().len() as u32
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Applies retention and age-based rolls to every partition, and does
    /// what their rolls left (blocking; the background task calls it every
    /// `retention_check_interval`).
    pub fn maintain(&self, now_ms: i64) -> Result<(), StorageError> {
        let settings = self.settings();
        let mut result = Ok(());
        for p in self.partitions().iter() {
            p.needs_care.store(false, Ordering::Release);
            result = result.and(p.maintain(&settings, now_ms));
        }
        result
    }

    /// What follows a roll, for each partition that rolled since the last
    /// call (blocking).
    pub fn after_roll(&self, now_ms: i64) -> Result<(), StorageError> {
        let settings = self.settings();
        let mut result = Ok(());
        for p in self.partitions().iter() {
            if p.needs_care.swap(false, Ordering::AcqRel) {
                result = result.and(p.after_roll(&settings, now_ms));
            }
        }
        result
    }

    /// Stops every partition of a topic whose directory was moved to be
    /// deleted: waiting produces fail, long polls return, nothing is synced.
    fn discard(&self) {
        self.closed.store(true, Ordering::Release);
        for p in self.partitions().iter() {
            p.stop();
        }
    }

    /// Closes every partition (blocking); the first failure is returned,
    /// after all were tried.
    pub fn close(&self) -> Result<(), StorageError> {
        self.closed.store(true, Ordering::Release);
        let mut result = Ok(());
        for p in self.partitions().iter() {
            result = result.and(p.close());
        }
        result
    }
}

/// All topics, by name.
pub struct Topics {
    vfs: Arc<dyn Vfs>,
    config: Arc<Config>,
    dir: PathBuf,
    trash: PathBuf,
    map: DashMap<String, Arc<Topic>>,
    /// Serialises creation and deletion, which touch directories.
    admin: Mutex<()>,
    /// Deletions so far, to name trash directories uniquely.
    deletions: std::sync::atomic::AtomicU64,
    /// Topics whose directories failed to open at start, with the reason.
    broken: DashMap<String, String>,
    /// Wakes the background task when a topic has rolled.
    care: Arc<Notify>,
    /// `[storage] cache_bytes`, shared by every partition's log.
    cache: TailCache,
}

impl Topics {
    /// Opens every topic under `<data_dir>/topics` and creates the topics
    /// the configuration names. Blocking.
    pub fn load(config: Arc<Config>) -> Result<Topics, TopicError> {
        Topics::load_with(config, OsVfs::shared())
    }

    /// [`Topics::load`] on another file system: every directory and file
    /// operation of the topics goes through `vfs` (tests use a simulated
    /// disk that loses what no sync covered).
    pub fn load_with(config: Arc<Config>, vfs: Arc<dyn Vfs>) -> Result<Topics, TopicError> {
        let data = config.server.data_dir.clone();
        let dir = data.join("topics");
        let trash = data.join("deleted");
        for d in [&data, &dir, &trash] {
            vfs.create_dir_all(d)
                .map_err(|e| io_error("", "create directory", d, e))?;
        }
        // Their names durable before any topic depends on them.
        sync_dir(&*vfs, "", &data)?;
        // Finish deletions (and creations) a crash interrupted.
        let leftovers = vfs
            .list(&trash)
            .map_err(|e| io_error("", "list", &trash, e))?;
        for name in leftovers {
            let path = trash.join(name);
            if let Err(e) = vfs.remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a deleted topic's files");
            }
        }
        let cache = TailCache::new(config.storage.cache_bytes);
        let topics = Topics {
            cache,
            vfs,
            config,
            dir,
            trash,
            map: DashMap::new(),
            admin: Mutex::new(()),
            deletions: Default::default(),
            broken: DashMap::new(),
            care: Arc::new(Notify::new()),
        };
        let mut names = topics
            .vfs
            .list(&topics.dir)
            .map_err(|e| io_error("", "list", &topics.dir, e))?;
        names.sort();
        for name in names {
            let path = topics.dir.join(&name);
            if check_name(&name).is_err() || !topics.vfs.is_dir(&path) {
                tracing::warn!(path = %path.display(), "ignoring entry that is not a topic");
                continue;
            }
            // One topic that cannot be opened must not stop the others: it
            // is reported, refused by name, and its files are not touched.
            let opened = read_settings(&*topics.vfs, &name, &path)
                .and_then(|created_with| topics.open(&name, created_with));
            match opened {
                Ok(topic) => {
                    let records: u64 = topic
                        .partitions()
                        .iter()
                        .map(|p| p.log.next_offset() - p.log.lowest_offset())
                        .sum();
                    tracing::info!(topic = %name, partitions = topic.partition_count(), records, "loaded topic");
                    topics.map.insert(name, topic);
                }
                Err(e) => {
                    tracing::error!(topic = %name, error = %e, "topic could not be opened; serving the others, its files left as they are");
                    topics.broken.insert(name, e.to_string());
                }
            }
        }
        let held = topics.partitions_held();
        if held > topics.config.server.max_partitions {
            // Counts a file raised, or a lowered limit: what is on disk is
            // served; creating topics and raising partitions stay refused.
            tracing::warn!(
                partitions = held,
                max_partitions = topics.config.server.max_partitions,
                "the topics hold more partitions than max_partitions"
            );
        }
        for name in topics.config.topics.keys() {
            if topics.map.contains_key(name) || topics.broken.contains_key(name) {
                continue;
            }
            match topics.create(name, &[]) {
                Ok(_) => tracing::info!(topic = %name, "created topic named in the configuration"),
                Err(e) => {
                    tracing::error!(topic = %name, error = %e, "could not create a topic named in the configuration")
                }
            }
        }
        Ok(topics)
    }

    fn open(&self, name: &str, created_with: TopicOverrides) -> Result<Arc<Topic>, TopicError> {
        let settings = self
            .config
            .open_settings(name, &created_with)
            .map_err(|reason| TopicError::InvalidConfig {
                name: name.to_owned(),
                reason,
            })?;
        let dir = self.dir.join(name);
        refuse_old_layout(&*self.vfs, name, &dir)?;
        // A partition directory beyond the settings' count (an alter that
        // made it, then failed to record the count) is opened too: its
        // partition number may have been used.
        // Only directories named as the broker names them ("3", never
        // "03" or "+3"), and never more than a topic may have.
        let on_disk = self
            .vfs
            .list(&dir)
            .map_err(|e| io_error(name, "list", &dir, e))?
            .iter()
            .filter_map(|n| n.parse::<u32>().ok().filter(|p| p.to_string() == *n))
            .filter(|p| self.vfs.is_dir(&dir.join(p.to_string())))
            .map(|p| u64::from(p) + 1)
            .max()
            .unwrap_or(0);
        if on_disk > u64::from(super::config::MAX_TOPIC_PARTITIONS) {
            return Err(TopicError::InvalidConfig {
                name: name.to_owned(),
                reason: format!(
                    "{} holds a partition directory numbered {}, past the most a topic may have ({})",
                    dir.display(),
                    on_disk - 1,
                    super::config::MAX_TOPIC_PARTITIONS
                ),
            });
        }
        let on_disk = on_disk as u32;
        let count = settings.partitions.max(on_disk);
        if count > settings.partitions {
            // A file's [defaults] or [topics.NAME] lowered below what the
            // topic has: partitions are never dropped. Reported as it is.
            tracing::warn!(topic = %name, partitions = count, setting = settings.partitions, "the topic has more partitions than its settings say; all are kept");
        }
        let mut settings = settings;
        settings.partitions = count;
        let topic_name: Arc<str> = Arc::from(name);
        let mut partitions: Vec<Arc<Partition>> = Vec::with_capacity(count as usize);
        for id in 0..count {
            match self.open_partition(&topic_name, id, &settings) {
                Ok(p) => partitions.push(p),
                Err(e) => {
                    // Those opened already stop (their sync tasks exit and
                    // let go of their logs), or they would outlive the
                    // topic that failed.
                    for p in &partitions {
                        p.stop();
                    }
                    return Err(e);
                }
            }
        }
        let sources = self.config.setting_sources(name, &created_with);
        Ok(Arc::new(Topic {
            name: topic_name,
            state: Mutex::new(Settings {
                effective: settings,
                given: created_with,
                sources,
            }),
            partitions: RwLock::new(Arc::new(partitions)),
            closed: AtomicBool::new(false),
        }))
    }

    /// Opens (or creates) partition `id` of a topic, and starts its sync
    /// task.
    fn open_partition(
        &self,
        name: &Arc<str>,
        id: u32,
        settings: &TopicSettings,
    ) -> Result<Arc<Partition>, TopicError> {
        let mut log_config = settings.log_config(self.config.server.max_frame_bytes);
        log_config.io = self.config.storage.io;
        log_config.cache = Some(self.cache.clone());
        let dir = self.dir.join(&**name).join(id.to_string());
        let log = Log::open_with(Arc::clone(&self.vfs), dir, log_config).map_err(|source| {
            TopicError::Storage {
                name: name.to_string(),
                source,
            }
        })?;
        for (base, report) in log.recovery() {
            tracing::warn!(topic = %name, partition = id, segment = base, ?report, "recovery repaired the log");
        }
        let next = log.next_offset();
        let partition = Arc::new(Partition {
            topic: Arc::clone(name),
            id,
            log,
            flush: settings.flush,
            flush_interval: settings.flush_interval,
            visible: watch::Sender::new(next),
            durable: watch::Sender::new(Durable {
                synced: next,
                failed: None,
            }),
            sync_wanted: Notify::new(),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            needs_care: AtomicBool::new(false),
            care: Arc::clone(&self.care),
        });
        if partition.flush != Flush::Never {
            tokio::spawn(Arc::clone(&partition).run_sync_task());
        }
        Ok(partition)
    }

    /// Partitions over all topics, those that failed to open counting one.
    fn partitions_held(&self) -> usize {
        self.map
            .iter()
            .map(|t| t.partition_count() as usize)
            .sum::<usize>()
            + self.broken.len()
    }

    /// Refuses `more` partitions beyond what the broker holds when that
    /// passes `max_partitions`.
    fn check_partition_room(&self, name: &str, more: usize) -> Result<(), TopicError> {
        let max = self.config.server.max_partitions;
        let held = self.partitions_held();
        if held + more > max {
            return Err(TopicError::TooManyPartitions {
                name: name.to_owned(),
                asked: more,
                held,
                max,
            });
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.get(name).map(|t| Arc::clone(t.value()))
    }

    /// The topic, or why there is none by that name.
    pub fn lookup(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if let Some(topic) = self.get(name) {
            return Ok(topic);
        }
        self.refuse_broken(name)?;
        check_name(name).map_err(|reason| TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        Err(TopicError::Unknown(name.to_owned()))
    }

    fn refuse_broken(&self, name: &str) -> Result<(), TopicError> {
        match self.broken.get(name) {
            Some(reason) => Err(TopicError::Broken {
                name: name.to_owned(),
                reason: reason.value().clone(),
            }),
            None => Ok(()),
        }
    }

    /// Topics that failed to open at start, with the reason.
    pub fn broken(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .broken
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort();
        all
    }

    /// Names of all topics, sorted; those that failed to open too (asking
    /// for one of those says why).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.map.iter().map(|t| t.key().clone()).collect();
        names.extend(self.broken.iter().map(|t| t.key().clone()));
        names.sort();
        names
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.map.iter().map(|t| Arc::clone(t.value())).collect()
    }

    /// Creates a topic with settings given as `key = value` strings. Blocking.
    pub fn create(&self, name: &str, pairs: &[(String, String)]) -> Result<Arc<Topic>, TopicError> {
        check_name(name).map_err(|reason| TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        let created_with =
            TopicOverrides::from_pairs(pairs).map_err(|reason| TopicError::InvalidConfig {
                name: name.to_owned(),
                reason,
            })?;
        // Check the settings before anything touches the disk.
        self.config
            .topic_settings(name, &created_with)
            .map_err(|reason| TopicError::InvalidConfig {
                name: name.to_owned(),
                reason,
            })?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if self.map.contains_key(name) {
            return Err(TopicError::AlreadyExists(name.to_owned()));
        }
        self.refuse_broken(name)?;
        // A setting the file pins to another value would be silently lost.
        let overruled = self.config.overruled(name, &created_with);
        if !overruled.is_empty() {
            return Err(TopicError::InvalidConfig {
                name: name.to_owned(),
                reason: format!(
                    "{}; create it without {}, or change the file",
                    overruled.join("; "),
                    if overruled.len() == 1 {
                        "that setting"
                    } else {
                        "those settings"
                    }
                ),
            });
        }
        let max = self.config.server.max_topics;
        if self.map.len() + self.broken.len() >= max {
            return Err(TopicError::TooMany {
                name: name.to_owned(),
                max,
            });
        }
        let partitions = self
            .config
            .topic_settings(name, &created_with)
            .map_or(1, |s| s.partitions);
        self.check_partition_room(name, partitions as usize)?;
        // Made in the trash and renamed into place, so that a crash leaves
        // the topic whole with its settings or not there at all (the trash
        // is emptied at start).
        let vfs = &*self.vfs;
        let staging = self.trash_path();
        let dir = self.dir.join(name);
        vfs.create_dir_all(&staging)
            .map_err(|e| io_error(name, "create directory", &staging, e))?;
        let staged = write_settings(vfs, name, &staging, pairs).and_then(|()| {
            vfs.rename(&staging, &dir)
                .map_err(|e| io_error(name, "rename", &staging, e))
        });
        if let Err(e) = staged {
            let _ = vfs.remove_dir_all(&staging);
            return Err(e);
        }
        let made = sync_dir(vfs, name, &self.dir).and_then(|()| self.open(name, created_with));
        let topic = match made {
            Ok(topic) => topic,
            Err(e) => {
                // Not acknowledged: take it away again.
                if vfs.remove_dir_all(&dir).is_ok() {
                    let _ = sync_dir(vfs, name, &self.dir);
                }
                return Err(e);
            }
        };
        self.map.insert(name.to_owned(), Arc::clone(&topic));
        tracing::info!(topic = %name, "created topic");
        Ok(topic)
    }

    /// Changes a running topic's settings (blocking): `set` as in
    /// [`Topics::create`], `reset` keys back to what lies below the topic's
    /// own settings. Persisted in `topic.toml` before it takes effect;
    /// retention and age-based rolls then run at once with the new values.
    /// `flush` and `flush_interval_ms` cannot change while the topic runs,
    /// and a setting the configuration file pins for this topic is refused,
    /// as at creation.
    pub fn alter(
        &self,
        name: &str,
        set: &[(String, String)],
        reset: &[String],
    ) -> Result<Arc<Topic>, TopicError> {
        let invalid = |reason: String| TopicError::InvalidConfig {
            name: name.to_owned(),
            reason,
        };
        if set.is_empty() && reset.is_empty() {
            return Err(invalid(
                "nothing to change: give settings to set or to reset".into(),
            ));
        }
        let keys: Vec<String> = TopicSettings::default()
            .to_pairs()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if let Some(key) = reset.iter().find(|k| !keys.contains(k)) {
            return Err(invalid(format!(
                "cannot reset `{key}`: the settings are {}",
                keys.join(", ")
            )));
        }
        if let Some((key, _)) = set.iter().find(|(k, _)| reset.contains(k)) {
            return Err(invalid(format!("`{key}` is both set and reset")));
        }
        let given = TopicOverrides::from_pairs(set).map_err(invalid)?;
        let mut overruled = self.config.overruled(name, &given);
        if let Some(file) = self.config.topics.get(name) {
            let pinned = file.to_pairs();
            for key in reset {
                if let Some((_, v)) = pinned.iter().find(|(k, _)| k == key) {
                    overruled.push(format!(
                        "resetting {key} changes nothing: the broker's configuration file sets {key} = {v} in [topics.{name}]"
                    ));
                }
            }
        }
        if !overruled.is_empty() {
            return Err(invalid(overruled.join("; ")));
        }
        // Looked up under the lock: a delete (and a new topic of the same
        // name) cannot come between the lookup and the write.
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self.lookup(name)?;
        let current = topic.current();
        // The given settings over those the topic has, less the reset ones
        // (no key is both: checked above).
        let pairs: Vec<(String, String)> = owned_pairs(&given.over(&current.given))
            .into_iter()
            .filter(|(k, _)| !reset.contains(k))
            .collect();
        let next = TopicOverrides::from_pairs(&pairs).map_err(invalid)?;
        let settings = self.config.topic_settings(name, &next).map_err(invalid)?;
        let old = &current.effective;
        for (key, changed) in [
            ("flush", settings.flush != old.flush),
            (
                "flush_interval_ms",
                settings.flush_interval != old.flush_interval,
            ),
        ] {
            if changed {
                return Err(invalid(format!(
                    "{key} cannot change while the topic runs (the topic's durability is built around it); create a new topic with the {key} you want"
                )));
            }
        }
        let mut settings = settings;
        let count = topic.partition_count();
        // Only an alter that names `partitions` can ask to lower them; a
        // lower count from the file's layers is the topic's count as it is
        // (partitions are never dropped).
        let names_partitions =
            given.partitions.is_some() || reset.iter().any(|k| k == "partitions");
        if settings.partitions < count && !names_partitions {
            settings.partitions = count;
        }
        if settings.partitions < count {
            return Err(invalid(format!(
                "partitions cannot be lowered (the topic has {count}, {} asked): as in Kafka, records never move between partitions; create a new topic with fewer instead",
                settings.partitions
            )));
        }
        let added = settings.partitions - count;
        if added > 0 {
            self.check_partition_room(name, added as usize)?;
        }
        let dir = self.dir.join(name);
        if let Err(e) = write_settings(&*self.vfs, name, &dir, &pairs) {
            // The new file may be in place already (the directory sync
            // failed): put the settings in effect back, so that a restart
            // does not bring in what the client was told failed.
            let old = owned_pairs(&current.given);
            if let Err(restore) = write_settings(&*self.vfs, name, &dir, &old) {
                tracing::error!(topic = %name, error = %restore, "an alter failed and its settings file could not be restored: a restart may load the altered settings");
            }
            return Err(e);
        }
        let limits = settings.log_config(self.config.server.max_frame_bytes);
        for p in topic.partitions().iter() {
            p.log
                .set_limits(&limits)
                .map_err(|source| TopicError::Storage {
                    name: name.to_owned(),
                    source,
                })?;
        }
        if added > 0 {
            // New partitions start empty; producers see them once they are
            // all open. The count is in topic.toml already: if one fails to
            // open, those opened so far are served (their sync tasks run)
            // and a restart opens the rest.
            let mut all = topic.partitions().as_ref().clone();
            let mut failed = None;
            for id in count..settings.partitions {
                match self.open_partition(&topic.name, id, &settings) {
                    Ok(p) => all.push(p),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let opened = all.len() as u32;
            *topic.partitions.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
            tracing::info!(topic = %name, from = count, to = opened, "added partitions");
            if let Some(e) = failed {
                tracing::error!(topic = %name, opened, asked = settings.partitions, error = %e, "adding partitions failed; the rest open at the next start");
                settings.partitions = opened;
                let sources = self.config.setting_sources(name, &next);
                *topic.state.lock().unwrap_or_else(|p| p.into_inner()) = Settings {
                    effective: settings,
                    given: next,
                    sources,
                };
                return Err(e);
            }
        }
        let sources = self.config.setting_sources(name, &next);
        let changes: Vec<String> = settings
            .to_pairs()
            .into_iter()
            .zip(old.to_pairs())
            .filter(|(new, was)| new != was)
            .map(|((k, v), (_, was))| format!("{k}: {was} -> {v}"))
            .collect();
        *topic.state.lock().unwrap_or_else(|p| p.into_inner()) = Settings {
            effective: settings,
            given: next,
            sources,
        };
        tracing::info!(topic = %name, changes = %changes.join(", "), "altered topic");
        // The new retention and roll age apply now, not at the next check.
        if let Err(e) = topic.maintain(now_ms()) {
            tracing::warn!(topic = %name, error = %e, "retention after an alter failed");
        }
        Ok(topic)
    }

    /// Returns the topic, creating it with the defaults if it does not exist.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if let Some(topic) = self.get(name) {
            return Ok(topic);
        }
        match self.create(name, &[]) {
            Err(TopicError::AlreadyExists(_)) => self
                .get(name)
                .ok_or_else(|| TopicError::Unknown(name.to_owned())),
            other => other,
        }
    }

    /// Deletes a topic and its data. Blocking.
    ///
    /// The directory is first renamed into `<data_dir>/deleted/`, so that a
    /// crash midway never leaves half a topic that would be loaded again;
    /// only once that rename is durable does the topic stop being served.
    /// If it cannot be moved, the topic stays whole and served.
    pub fn delete(&self, name: &str) -> Result<(), TopicError> {
        check_name(name).map_err(|reason| TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if !self.map.contains_key(name) {
            // A broken topic's files are the operator's to deal with.
            self.refuse_broken(name)?;
            return Err(TopicError::Unknown(name.to_owned()));
        }
        let vfs = &*self.vfs;
        let dir = self.dir.join(name);
        let doomed = self.trash_path();
        vfs.rename(&dir, &doomed)
            .map_err(|e| io_error(name, "rename", &dir, e))?;
        let synced = sync_dir(vfs, name, &self.trash).and_then(|()| sync_dir(vfs, name, &self.dir));
        let mut failure = None;
        if let Err(e) = synced {
            // Not known to be durable: put it back and keep serving it.
            if vfs.rename(&doomed, &dir).is_ok() {
                return Err(e);
            }
            // Neither here nor there: it cannot be served from the trash,
            // and a crash may bring it back. Say so.
            tracing::error!(topic = %name, error = %e, "delete half done: the topic's directory is in the trash");
            failure = Some(e);
        }
        let topic = self.map.remove(name).map(|(_, t)| t);
        if let Some(topic) = topic {
            // Its files are in the trash: nothing of it needs syncing (a
            // sync of its moved directories would only fail).
            topic.discard();
        }
        if let Err(e) = vfs.remove_dir_all(&doomed) {
            // The topic is gone either way; the next start finishes this.
            tracing::warn!(topic = %name, path = %doomed.display(), error = %e, "could not remove a deleted topic's files");
        }
        if let Some(e) = failure {
            return Err(e);
        }
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// A fresh name in the trash. Not derived from the topic's name, which
    /// may already be as long as a file name can be.
    fn trash_path(&self) -> PathBuf {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = self.deletions.fetch_add(1, Ordering::Relaxed);
        self.trash.join(format!("{stamp}.{seq}"))
    }

    /// Closes every topic (blocking): flush, sync, trim indexes.
    pub fn close_all(&self) {
        for topic in self.all() {
            if let Err(e) = topic.close() {
                tracing::error!(topic = %topic.name, error = %e, "closing topic failed");
            }
        }
    }
}

fn io_error(name: &str, op: &'static str, path: &Path, source: std::io::Error) -> TopicError {
    TopicError::Io {
        name: name.to_owned(),
        op,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(vfs: &dyn Vfs, name: &str, dir: &Path) -> Result<(), TopicError> {
    vfs.sync_dir(dir)
        .map_err(|e| io_error(name, "fsync directory", dir, e))
}

/// Refuses a topic directory laid out as Spool 0.1 kept it (segments beside
/// `topic.toml`, no partition directories), before anything in it changes.
fn refuse_old_layout(vfs: &dyn Vfs, name: &str, dir: &Path) -> Result<(), TopicError> {
    let names = vfs.list(dir).map_err(|e| io_error(name, "list", dir, e))?;
    if names.iter().any(|n| n.ends_with(".store")) {
        return Err(TopicError::Storage {
            name: name.to_owned(),
            source: StorageError::OldFormat {
                path: dir.to_owned(),
                format: "Spool 0.1's layout and batch format (segments directly in the topic's directory)",
            },
        });
    }
    Ok(())
}

/// Settings as the `key = value` strings `topic.toml` keeps.
fn owned_pairs(settings: &TopicOverrides) -> Vec<(String, String)> {
    settings
        .to_pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// Writes the creation settings: temp file, fsync, rename, directory fsync.
fn write_settings(
    vfs: &dyn Vfs,
    name: &str,
    dir: &Path,
    pairs: &[(String, String)],
) -> Result<(), TopicError> {
    let mut table = toml::Table::new();
    for (k, v) in pairs {
        table.insert(k.clone(), toml::Value::String(v.clone()));
    }
    let text = toml::to_string(&table).map_err(|e| TopicError::InvalidConfig {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let tmp = dir.join(format!("{SETTINGS_FILE}.tmp"));
    let path = dir.join(SETTINGS_FILE);
    let write = || -> std::io::Result<()> {
        if vfs.exists(&tmp) {
            vfs.remove_file(&tmp)?;
        }
        let file = vfs.open(&tmp, Open::CreateNew)?;
        file.write_at(0, text.as_bytes())?;
        file.sync_data()?;
        // An alter replaces the file: a crash leaves the old settings or
        // the new ones.
        vfs.replace(&tmp, &path)
    };
    write().map_err(|e| io_error(name, "write", &path, e))?;
    sync_dir(vfs, name, dir)
}

fn read_settings(vfs: &dyn Vfs, name: &str, dir: &Path) -> Result<TopicOverrides, TopicError> {
    let path = dir.join(SETTINGS_FILE);
    let read = || -> std::io::Result<Option<Vec<u8>>> {
        let file = match vfs.open(&path, Open::ReadOnly) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = file.size()?;
        if size > MAX_SETTINGS_FILE {
            return Err(std::io::Error::other(format!(
                "{size} bytes; a settings file is at most {MAX_SETTINGS_FILE}"
            )));
        }
        file.read_at(0, size as usize).map(Some)
    };
    let bytes = match read() {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(TopicOverrides::default()),
        Err(e) => return Err(io_error(name, "read", &path, e)),
    };
    let text = String::from_utf8(bytes).map_err(|_| TopicError::InvalidConfig {
        name: name.to_owned(),
        reason: format!("{}: not UTF-8", path.display()),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| TopicError::InvalidConfig {
        name: name.to_owned(),
        reason: format!("{}: {e}", path.display()),
    })?;
    let pairs: Vec<(String, String)> = table
        .into_iter()
        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    TopicOverrides::from_pairs(&pairs).map_err(|reason| TopicError::InvalidConfig {
        name: name.to_owned(),
        reason: format!("{}: {reason}", path.display()),
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The background task: after a topic rolls, finishes the roll's work for
/// it (seal, next segment, retention) at once; every `interval`, applies
/// retention and age-based rolls to every topic. Until `shutdown` fires.
pub async fn run_retention(
    topics: Arc<Topics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let every_topic = tokio::select! {
            _ = tick.tick() => true,
            _ = topics.care.notified() => false,
            _ = shutdown.changed() => return,
        };
        let topics = Arc::clone(&topics);
        let done = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            for topic in topics.all() {
                // Not while the topic is being deleted (its directory moves).
                let _admin = topics.admin.lock().unwrap_or_else(|p| p.into_inner());
                if topic.is_closed() {
                    continue;
                }
                // After a roll, only the partitions that rolled.
                let result = if every_topic {
                    topic.maintain(now)
                } else {
                    topic.after_roll(now)
                };
                match result {
                    // Deleted meanwhile: its directory went with it.
                    Err(_) if topic.is_closed() => {}
                    Err(e) => {
                        tracing::error!(topic = %topic.name(), error = %e, "retention failed")
                    }
                    Ok(()) => {}
                }
            }
        });
        let _ = done.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "a",
            "orders",
            "a.b-c_d",
            "A9",
            &"x".repeat(249),
            ".hidden",
            "...",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../etc",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(250),
            "a\\b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
