//! The broker's TOML configuration: `[server]`, `[defaults]` (settings every
//! topic gets) and `[topics.NAME]` (overrides for one topic). Every key and
//! its default is in `config/spool.toml`.
//!
//! Sizes take an integer (bytes) or a string with a unit: `"512MiB"`,
//! `"1GB"`, `"64 KiB"`. Durations take an integer (milliseconds) or a string:
//! `"500ms"`, `"30s"`, `"7d"`, `"1h 30m"`. Optional limits also take
//! `"unlimited"`. Unknown keys and bad values are errors that name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::net::BusyPoll;
use crate::storage::{IoMode, LogConfig, SyncMode, TimestampType};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Overrides of the built-in topic defaults, for every topic.
    #[serde(default)]
    pub defaults: TopicOverrides,
    /// Per-topic overrides; these topics are created at start if missing.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicOverrides>,
    /// `[kafka]`: the listener that speaks Kafka's protocol.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// `[groups]`: the group coordinator and committed offsets.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// `[storage]`: how every partition's log writes and caches.
    #[serde(default)]
    pub storage: StorageConfig,
}

/// `[storage]`: the write path of every log (src/storage/store.rs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `"buffered"` (through the page cache) or `"direct"` (`O_DIRECT`).
    #[serde(deserialize_with = "io_mode")]
    pub io: IoMode,
    /// With `io = "direct"`: memory for recently written data, shared by all
    /// partitions, from which consumers that keep up are served.
    #[serde(deserialize_with = "size")]
    pub cache_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            io: IoMode::default(),
            cache_bytes: 256 << 20,
        }
    }
}

fn io_mode<'de, D: Deserializer<'de>>(d: D) -> Result<IoMode, D::Error> {
    let s = String::deserialize(d)?;
    IoMode::parse(&s).ok_or_else(|| {
        de::Error::custom(format!(
            "io must be \"buffered\" or \"direct\", got \"{s}\""
        ))
    })
}

/// `[groups]`: consumer groups' limits and timings (src/broker/groups.rs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Groups with members at once.
    pub max_groups: usize,
    pub max_members_per_group: usize,
    /// A member's subscription metadata, an assignment, or a commit's
    /// metadata string, at most.
    #[serde(deserialize_with = "size")]
    pub max_metadata_bytes: u64,
    /// The session timeouts members may ask for (Kafka's
    /// group.min/max.session.timeout.ms).
    #[serde(deserialize_with = "duration")]
    pub min_session_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_session_timeout: Duration,
    /// How long a group's first rebalance waits for more members (Kafka's
    /// group.initial.rebalance.delay.ms).
    #[serde(deserialize_with = "duration")]
    pub initial_rebalance_delay: Duration,
    /// Committed offsets of a group without members are forgotten this
    /// long after its last commit or its last member left (Kafka's
    /// offsets.retention.minutes).
    #[serde(deserialize_with = "duration")]
    pub offsets_retention: Duration,
    /// How often members of broker-assigned groups (Spool's own protocol)
    /// heartbeat while their partitions stay put; partitions on the move
    /// are handed over at heartbeats a fifth of a second apart.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            max_groups: 10_000,
            max_members_per_group: 1_000,
            max_metadata_bytes: 1 << 20,
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            initial_rebalance_delay: Duration::from_secs(3),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

impl GroupsConfig {
    /// The coordinator's limits.
    pub fn limits(&self) -> crate::broker::groups::GroupLimits {
        crate::broker::groups::GroupLimits {
            max_groups: self.max_groups,
            max_members: self.max_members_per_group,
            max_metadata_bytes: self.max_metadata_bytes as usize,
            min_session_ms: self.min_session_timeout.as_millis() as u64,
            max_session_ms: self.max_session_timeout.as_millis() as u64,
            initial_rebalance_delay_ms: self.initial_rebalance_delay.as_millis() as u64,
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.max_groups == 0 || self.max_members_per_group == 0 {
            return Err("[groups] max_groups and max_members_per_group must be at least 1".into());
        }
        if self.max_metadata_bytes == 0 || self.max_metadata_bytes > u64::from(u32::MAX) {
            return Err("[groups] max_metadata_bytes must be between 1 and 4GiB - 1".into());
        }
        if self.min_session_timeout > self.max_session_timeout {
            return Err("[groups] min_session_timeout must not exceed max_session_timeout".into());
        }
        // Members heartbeat at this interval; at the session timeout or
        // beyond, every member would be removed between two heartbeats.
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.min_session_timeout
        {
            return Err(
                "[groups] heartbeat_interval must be above 0 and below min_session_timeout".into(),
            );
        }
        Ok(())
    }
}

/// `[kafka]`: a second listener, speaking Kafka's wire protocol over the
/// same topics (src/kafka).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Off: no Kafka listener.
    pub enabled: bool,
    /// `host:port`; "" turns the listener off too.
    pub listen: String,
    /// What Metadata tells clients to connect to (default: the address
    /// listened on, with the port the OS picked for port 0).
    pub advertised_address: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: true,
            listen: "127.0.0.1:9092".into(),
            advertised_address: None,
        }
    }
}

impl KafkaConfig {
    /// The address to listen on, or `None` when the listener is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if !self.enabled || self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("[kafka] listen = {:?}: {e}", self.listen))
    }
}

/// `[server]`: where the broker listens and stores, and its limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Largest frame a client may send; checked before anything is allocated.
    #[serde(deserialize_with = "size")]
    pub max_frame_bytes: u64,
    /// A frame that has started must be complete within this.
    #[serde(deserialize_with = "duration")]
    pub frame_timeout: Duration,
    /// A connection with no request for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A response that cannot be written within this closes the connection.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// Response bytes queued for one connection before the broker stops
    /// reading its requests (a consumer that does not read).
    #[serde(deserialize_with = "size")]
    pub max_queued_bytes: u64,
    /// Request bytes held in memory across all connections; beyond it the
    /// broker stops reading requests until some are dispatched.
    #[serde(deserialize_with = "size")]
    pub max_inflight_bytes: u64,
    /// Response bytes (fetched batches) held across all connections; beyond
    /// it fetches wait for room before they read, and their connections
    /// stop being read meanwhile.
    #[serde(deserialize_with = "size")]
    pub max_response_bytes: u64,
    /// Longest a FETCH may wait for data; a larger `max_wait_ms` is clamped.
    #[serde(deserialize_with = "duration")]
    pub max_fetch_wait: Duration,
    /// How often retention and time-based segment rolls run.
    #[serde(deserialize_with = "duration")]
    pub retention_check_interval: Duration,
    /// Whether a produce to an unknown topic creates it.
    pub auto_create_topics: bool,
    /// Most topics the broker holds: bounds what auto-creation lets any
    /// client claim (directories, open files, an empty topic's 16 KiB).
    pub max_topics: usize,
    /// Most partitions over all topics: each is a log (a directory, open
    /// files, a sync task and a spare segment).
    pub max_partitions: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// After answering, how long a connection keeps polling its socket for
    /// the next request before it sleeps. Zero (the default) never polls.
    /// Spends CPU to save the wake-up of a sleeping thread per request.
    /// `"auto"` (the default) polls only while a connection's requests
    /// come faster than a wake-up costs (see `spool::net::Poller`).
    #[serde(deserialize_with = "busy_poll")]
    pub busy_poll: BusyPoll,
    /// Threads that serve connections; 0 means one per CPU. Read by
    /// `spool-broker` when it builds its runtime (a broker started in code
    /// runs on its caller's runtime).
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7171)),
            data_dir: PathBuf::from("./data"),
            max_connections: 1024,
            max_frame_bytes: 16 << 20,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(30),
            max_queued_bytes: 64 << 20,
            max_inflight_bytes: 256 << 20,
            max_response_bytes: 1 << 30,
            max_fetch_wait: Duration::from_secs(30),
            retention_check_interval: Duration::from_secs(30),
            auto_create_topics: true,
            max_topics: 1000,
            max_partitions: 10_000,
            shutdown_timeout: Duration::from_secs(30),
            busy_poll: BusyPoll::AUTO,
            worker_threads: 0,
        }
    }
}

/// When produced records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// Acknowledge after an fdatasync (shared by concurrent producers).
    Always,
    /// Acknowledge after the write; fdatasync every `flush_interval_ms`.
    Interval,
    /// Acknowledge after the write; the OS writes back when it likes.
    Never,
}

impl Flush {
    pub fn as_str(self) -> &'static str {
        match self {
            Flush::Always => "always",
            Flush::Interval => "interval",
            Flush::Never => "never",
        }
    }
}

/// Most partitions one topic may have (the broker's `max_partitions`
/// bounds them all together).
pub const MAX_TOPIC_PARTITIONS: u32 = 10_000;

/// Which time a topic's batches carry (Kafka's `message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampKind {
    /// The producer's timestamps, as sent.
    Create,
    /// The broker's clock when the batch is appended.
    LogAppend,
}

impl TimestampKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimestampKind::Create => "create",
            TimestampKind::LogAppend => "log_append",
        }
    }
}

/// Settings of one topic, any of which may be absent (then the layer below
/// decides: `[topics.NAME]` over creation settings over `[defaults]` over
/// the built-in defaults).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicOverrides {
    #[serde(deserialize_with = "some_size")]
    pub segment_bytes: Option<u64>,
    #[serde(deserialize_with = "some_limit_duration")]
    pub segment_ms: Option<Limit<Duration>>,
    #[serde(deserialize_with = "some_limit_size")]
    pub retention_bytes: Option<Limit<u64>>,
    #[serde(deserialize_with = "some_limit_duration")]
    pub retention_ms: Option<Limit<Duration>>,
    pub flush: Option<Flush>,
    #[serde(deserialize_with = "some_duration")]
    pub flush_interval_ms: Option<Duration>,
    #[serde(deserialize_with = "some_size")]
    pub max_record_bytes: Option<u64>,
    #[serde(deserialize_with = "some_size")]
    pub index_bytes: Option<u64>,
    pub timestamp_type: Option<TimestampKind>,
    #[serde(deserialize_with = "some_limit_duration")]
    pub max_timestamp_ahead_ms: Option<Limit<Duration>>,
    #[serde(deserialize_with = "some_count")]
    pub partitions: Option<u32>,
}

/// A limit that may be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    Unlimited,
    At(T),
}

impl<T: Copy> Limit<T> {
    pub fn get(self) -> Option<T> {
        match self {
            Limit::Unlimited => None,
            Limit::At(v) => Some(v),
        }
    }
}

/// The settings a topic runs with, every one decided.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSettings {
    pub segment_bytes: u64,
    pub segment_ms: Option<Duration>,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<Duration>,
    pub flush: Flush,
    pub flush_interval: Duration,
    pub max_record_bytes: u64,
    pub index_bytes: u64,
    pub timestamp_type: TimestampKind,
    pub max_timestamp_ahead: Option<Duration>,
    /// Each its own log; raised by an alter, never lowered.
    pub partitions: u32,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            segment_bytes: 1 << 30,
            segment_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            retention_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            flush: Flush::Always,
            flush_interval: Duration::from_secs(1),
            max_record_bytes: 1 << 20,
            index_bytes: 10 << 20,
            timestamp_type: TimestampKind::Create,
            // Kafka 4's message.timestamp.after.max.ms.
            max_timestamp_ahead: Some(Duration::from_secs(3600)),
            partitions: 1,
        }
    }
}

impl TopicOverrides {
    /// Parses `key = value` pairs as given to CREATE_TOPIC, with the same
    /// rules as the TOML file (values are strings there).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<TopicOverrides, String> {
        let mut table = toml::Table::new();
        for (k, v) in pairs {
            if table
                .insert(k.clone(), toml::Value::String(v.clone()))
                .is_some()
            {
                return Err(format!("setting `{k}` given twice"));
            }
        }
        TopicOverrides::deserialize(table).map_err(|e| {
            // The table's error does not say which key: find it, so that
            // the message names the setting.
            let bad = pairs.iter().find(|(k, v)| {
                let one = toml::Table::from_iter([(k.clone(), toml::Value::String(v.clone()))]);
                TopicOverrides::deserialize(one).is_err()
            });
            match bad {
                Some((k, _)) => format!("`{k}`: {}", e.message()),
                None => e.message().to_owned(),
            }
        })
    }

    /// The settings given here, as `key = value` strings in the units
    /// DESCRIBE_TOPIC uses (bytes, milliseconds, `unlimited`), in the order
    /// of [`TopicSettings::to_pairs`].
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| d.as_millis().to_string();
        let limit_ms = |l: Limit<Duration>| l.get().map_or("unlimited".to_owned(), ms);
        let limit = |l: Limit<u64>| l.get().map_or("unlimited".to_owned(), |b| b.to_string());
        [
            ("segment_bytes", self.segment_bytes.map(|b| b.to_string())),
            ("segment_ms", self.segment_ms.map(limit_ms)),
            ("retention_bytes", self.retention_bytes.map(limit)),
            ("retention_ms", self.retention_ms.map(limit_ms)),
            ("flush", self.flush.map(|f| f.as_str().to_owned())),
            ("flush_interval_ms", self.flush_interval_ms.map(ms)),
            (
                "max_record_bytes",
                self.max_record_bytes.map(|b| b.to_string()),
            ),
            ("index_bytes", self.index_bytes.map(|b| b.to_string())),
            (
                "timestamp_type",
                self.timestamp_type.map(|t| t.as_str().to_owned()),
            ),
            (
                "max_timestamp_ahead_ms",
                self.max_timestamp_ahead_ms.map(limit_ms),
            ),
            ("partitions", self.partitions.map(|n| n.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// `self` over `below`: each key set here wins.
    pub fn over(&self, below: &TopicOverrides) -> TopicOverrides {
        TopicOverrides {
            segment_bytes: self.segment_bytes.or(below.segment_bytes),
            segment_ms: self.segment_ms.or(below.segment_ms),
            retention_bytes: self.retention_bytes.or(below.retention_bytes),
            retention_ms: self.retention_ms.or(below.retention_ms),
            flush: self.flush.or(below.flush),
            flush_interval_ms: self.flush_interval_ms.or(below.flush_interval_ms),
            max_record_bytes: self.max_record_bytes.or(below.max_record_bytes),
            index_bytes: self.index_bytes.or(below.index_bytes),
            timestamp_type: self.timestamp_type.or(below.timestamp_type),
            max_timestamp_ahead_ms: self.max_timestamp_ahead_ms.or(below.max_timestamp_ahead_ms),
            partitions: self.partitions.or(below.partitions),
        }
    }

    /// Applies these overrides to complete settings, and checks the result.
    pub fn resolve(&self, base: &TopicSettings) -> Result<TopicSettings, String> {
        let pick = |o: Option<Limit<Duration>>, d: Option<Duration>| o.map_or(d, Limit::get);
        let settings = TopicSettings {
            segment_bytes: self.segment_bytes.unwrap_or(base.segment_bytes),
            segment_ms: pick(self.segment_ms, base.segment_ms),
            retention_bytes: self
                .retention_bytes
                .map_or(base.retention_bytes, Limit::get),
            retention_ms: pick(self.retention_ms, base.retention_ms),
            flush: self.flush.unwrap_or(base.flush),
            flush_interval: self.flush_interval_ms.unwrap_or(base.flush_interval),
            max_record_bytes: self.max_record_bytes.unwrap_or(base.max_record_bytes),
            index_bytes: self.index_bytes.unwrap_or(base.index_bytes),
            timestamp_type: self.timestamp_type.unwrap_or(base.timestamp_type),
            max_timestamp_ahead: pick(self.max_timestamp_ahead_ms, base.max_timestamp_ahead),
            partitions: self.partitions.unwrap_or(base.partitions),
        };
        settings.check()?;
        Ok(settings)
    }
}

impl TopicSettings {
    fn check(&self) -> Result<(), String> {
        if !(1024..=u64::from(u32::MAX)).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes must be between 1KiB and 4GiB - 1, got {}",
                self.segment_bytes
            ));
        }
        if !(64..=u64::from(u32::MAX)).contains(&self.index_bytes) {
            return Err(format!(
                "index_bytes must be between 64 and 4GiB - 1, got {}",
                self.index_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "max_record_bytes must be between 1 and 4GiB - 1, got {}",
                self.max_record_bytes
            ));
        }
        if self.flush_interval.is_zero() {
            return Err("flush_interval_ms must be more than 0".into());
        }
        if !(1..=MAX_TOPIC_PARTITIONS).contains(&self.partitions) {
            return Err(format!(
                "partitions must be between 1 and {MAX_TOPIC_PARTITIONS}, got {}",
                self.partitions
            ));
        }
        Ok(())
    }

    /// How old the active segment may grow before it rolls: `segment_ms`,
    /// but at most a tenth of `retention_ms`. Retention deletes whole sealed
    /// segments, so a record goes about `retention_ms` after it was written
    /// (at most a tenth more, plus `retention_check_interval`), even when
    /// `retention_ms` is shorter than `segment_ms` (where Kafka keeps it
    /// until the segment rolls).
    pub fn roll_age(&self) -> Option<Duration> {
        let tenth = self
            .retention_ms
            .map(|r| (r / 10).max(Duration::from_millis(1)));
        match (self.segment_ms, tenth) {
            (Some(s), Some(t)) => Some(s.min(t)),
            (s, t) => s.or(t),
        }
    }

    /// The storage configuration of a topic's log. A batch may be as large
    /// as a frame allows.
    pub fn log_config(&self, max_frame_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            index_bytes: self.index_bytes,
            segment_age: self.roll_age(),
            sync: match self.flush {
                Flush::Always => SyncMode::Always,
                Flush::Interval => SyncMode::Interval(self.flush_interval),
                Flush::Never => SyncMode::Never,
            },
            max_batch_bytes: max_frame_bytes.min(u64::from(u32::MAX)) as u32,
            max_record_bytes: self.max_record_bytes.min(u64::from(u32::MAX)) as u32,
            timestamp_type: match self.timestamp_type {
                TimestampKind::Create => TimestampType::Create,
                TimestampKind::LogAppend => TimestampType::LogAppend,
            },
            max_timestamp_ahead: self.max_timestamp_ahead,
            // The broker's `[storage]` section sets these (`Topics`).
            io: IoMode::default(),
            cache: None,
        }
    }

    /// Every setting as `key = value` strings, sizes in bytes and durations
    /// in milliseconds, as DESCRIBE_TOPIC reports them.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let ms =
            |d: Option<Duration>| d.map_or("unlimited".to_owned(), |d| d.as_millis().to_string());
        vec![
            ("segment_bytes".into(), self.segment_bytes.to_string()),
            ("segment_ms".into(), ms(self.segment_ms)),
            (
                "retention_bytes".into(),
                self.retention_bytes
                    .map_or("unlimited".into(), |b| b.to_string()),
            ),
            ("retention_ms".into(), ms(self.retention_ms)),
            ("flush".into(), self.flush.as_str().into()),
            (
                "flush_interval_ms".into(),
                self.flush_interval.as_millis().to_string(),
            ),
            ("max_record_bytes".into(), self.max_record_bytes.to_string()),
            ("index_bytes".into(), self.index_bytes.to_string()),
            ("timestamp_type".into(), self.timestamp_type.as_str().into()),
            (
                "max_timestamp_ahead_ms".into(),
                ms(self.max_timestamp_ahead),
            ),
            ("partitions".into(), self.partitions.to_string()),
        ]
    }
}

impl Config {
    /// Parses a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks values against each other; `parse` runs it, and so does
    /// `Broker::start` for configurations built in code.
    pub fn check(&self) -> Result<(), String> {
        self.kafka.listen_addr()?;
        self.groups.check()?;
        let s = &self.server;
        if s.max_frame_bytes < 1024 || s.max_frame_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "[server] max_frame_bytes must be between 1KiB and 4GiB - 1, got {}",
                s.max_frame_bytes
            ));
        }
        if s.max_inflight_bytes < s.max_frame_bytes {
            return Err("[server] max_inflight_bytes must be at least max_frame_bytes".into());
        }
        if s.max_queued_bytes < s.max_frame_bytes {
            return Err("[server] max_queued_bytes must be at least max_frame_bytes".into());
        }
        if s.max_response_bytes < s.max_queued_bytes {
            return Err("[server] max_response_bytes must be at least max_queued_bytes".into());
        }
        for (name, v) in [
            ("max_inflight_bytes", s.max_inflight_bytes),
            ("max_queued_bytes", s.max_queued_bytes),
            ("max_response_bytes", s.max_response_bytes),
        ] {
            if v > u64::from(u32::MAX) {
                return Err(format!("[server] {name} must be at most 4GiB - 1, got {v}"));
            }
        }
        if s.max_connections == 0 {
            return Err("[server] max_connections must be at least 1".into());
        }
        if s.max_topics == 0 {
            return Err("[server] max_topics must be at least 1".into());
        }
        if s.max_partitions == 0 {
            return Err("[server] max_partitions must be at least 1".into());
        }
        for (name, d) in [
            ("frame_timeout", s.frame_timeout),
            ("idle_timeout", s.idle_timeout),
            ("write_timeout", s.write_timeout),
            ("retention_check_interval", s.retention_check_interval),
            ("max_fetch_wait", s.max_fetch_wait),
        ] {
            if d.is_zero() {
                return Err(format!("[server] {name} must be more than 0"));
            }
        }
        // Polling longer than this only burns CPU: a client that has not
        // sent its next request within it was not going to soon.
        if let BusyPoll::Fixed(d) | BusyPoll::Adaptive(d) = s.busy_poll {
            if d > Duration::from_millis(10) {
                return Err(format!(
                    "[server] busy_poll must be at most 10ms, got {d:?}"
                ));
            }
        }
        if s.worker_threads > 1024 {
            return Err(format!(
                "[server] worker_threads must be at most 1024 (0: one per CPU), got {}",
                s.worker_threads
            ));
        }
        let defaults = self
            .topic_defaults()
            .map_err(|e| format!("[defaults] {e}"))?;
        self.check_record_room(&defaults)
            .map_err(|e| format!("[defaults] {e}"))?;
        for name in self.topics.keys() {
            super::topic::check_name(name).map_err(|e| format!("[topics.{name}] {e}"))?;
            self.topic_settings(name, &TopicOverrides::default())
                .map_err(|e| format!("[topics.{name}] {e}"))?;
        }
        Ok(())
    }

    /// The settings every topic starts from: `[defaults]` over the built-in
    /// ones. The built-in `max_record_bytes` (1 MiB) is lowered to what a
    /// produce frame can carry when `max_frame_bytes` is smaller.
    pub fn topic_defaults(&self) -> Result<TopicSettings, String> {
        let mut builtin = TopicSettings::default();
        builtin.max_record_bytes = builtin.max_record_bytes.min(self.record_room().max(1));
        self.defaults.resolve(&builtin)
    }

    /// The largest record one produce frame can carry.
    fn record_room(&self) -> u64 {
        self.server
            .max_frame_bytes
            .saturating_sub(crate::protocol::MAX_PRODUCE_OVERHEAD as u64)
    }

    fn check_record_room(&self, settings: &TopicSettings) -> Result<(), String> {
        // A record must fit in one produce frame, with the largest topic
        // name and a batch header around it.
        let room = self.record_room();
        if settings.max_record_bytes > room {
            return Err(format!(
                "max_record_bytes of {} cannot be produced: a produce frame is at most [server] max_frame_bytes = {}, so a record can be at most {room} bytes",
                settings.max_record_bytes, self.server.max_frame_bytes
            ));
        }
        Ok(())
    }

    /// The settings a topic created (or altered) now with `created_with`
    /// would get; a `max_record_bytes` no produce frame can carry is refused.
    pub fn topic_settings(
        &self,
        topic: &str,
        created_with: &TopicOverrides,
    ) -> Result<TopicSettings, String> {
        let settings = self.resolve_topic(topic, created_with)?;
        self.check_record_room(&settings)?;
        Ok(settings)
    }

    /// The settings an existing topic opens with. A `max_record_bytes` that
    /// was allowed when the topic was made (before it was bounded by the
    /// frame, or under a larger `max_frame_bytes`) is lowered to what a
    /// frame carries, with a warning, rather than leaving the topic unserved.
    pub fn open_settings(
        &self,
        topic: &str,
        created_with: &TopicOverrides,
    ) -> Result<TopicSettings, String> {
        let mut settings = self.resolve_topic(topic, created_with)?;
        let room = self.record_room();
        if settings.max_record_bytes > room {
            tracing::warn!(
                topic,
                configured = settings.max_record_bytes,
                used = room,
                "max_record_bytes lowered to what one produce frame carries ([server] max_frame_bytes - 337)"
            );
            settings.max_record_bytes = room.max(1);
        }
        Ok(settings)
    }

    fn resolve_topic(
        &self,
        topic: &str,
        created_with: &TopicOverrides,
    ) -> Result<TopicSettings, String> {
        let file = self.topics.get(topic).cloned().unwrap_or_default();
        file.over(created_with).resolve(&self.topic_defaults()?)
    }

    /// Settings given for `topic` (at creation or by an alter) that its
    /// `[topics.NAME]` section sets to another value, which wins: one
    /// message per setting, naming both values.
    pub fn overruled(&self, topic: &str, given: &TopicOverrides) -> Vec<String> {
        let Some(file) = self.topics.get(topic) else {
            return Vec::new();
        };
        let pinned = file.to_pairs();
        given
            .to_pairs()
            .into_iter()
            .filter_map(|(key, value)| {
                let (_, winner) = pinned.iter().find(|(k, v)| *k == key && *v != value)?;
                Some(format!(
                    "{key} = {value} is overruled by the broker's configuration file, which sets {key} = {winner} in [topics.{topic}]"
                ))
            })
            .collect()
    }

    /// Where each setting of `topic` comes from, in the order of
    /// [`TopicSettings::to_pairs`]: `file [topics.NAME]`, `topic` (given at
    /// creation or by an alter, kept in the topic's `topic.toml`),
    /// `file [defaults]` or `default` (built in).
    pub fn setting_sources(
        &self,
        topic: &str,
        created_with: &TopicOverrides,
    ) -> Vec<(String, String)> {
        let keys = |o: Option<&TopicOverrides>| -> Vec<&'static str> {
            o.map(|o| o.to_pairs().into_iter().map(|(k, _)| k).collect())
                .unwrap_or_default()
        };
        let file = keys(self.topics.get(topic));
        let given = keys(Some(created_with));
        let defaults = keys(Some(&self.defaults));
        TopicSettings::default()
            .to_pairs()
            .into_iter()
            .map(|(key, _)| {
                let source = if file.contains(&key.as_str()) {
                    format!("file [topics.{topic}]")
                } else if given.contains(&key.as_str()) {
                    "topic".to_owned()
                } else if defaults.contains(&key.as_str()) {
                    "file [defaults]".to_owned()
                } else {
                    "default".to_owned()
                };
                (key, source)
            })
            .collect()
    }
}

/// A size or duration as written in the file: an integer or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(i64),
    Text(String),
}

fn parse_size(raw: Raw) -> Result<Limit<u64>, String> {
    match raw {
        Raw::Int(n) if n >= 0 => Ok(Limit::At(n as u64)),
        Raw::Int(n) => Err(format!("{n} is negative; use \"unlimited\" for no limit")),
        Raw::Text(t) if t.trim() == "unlimited" => Ok(Limit::Unlimited),
        Raw::Text(t) => match t.trim().parse::<bytesize::ByteSize>() {
            // ByteSize saturates on overflow; a value at u64::MAX is surely one.
            Ok(b) if b.as_u64() != u64::MAX => Ok(Limit::At(b.as_u64())),
            _ => Err(format!(
                "\"{t}\" is not a size like \"512MiB\", \"1GB\" or a number of bytes"
            )),
        },
    }
}

/// Longest duration: its milliseconds must fit the i64 that append times and
/// ages are compared in (about 292 million years).
const MAX_DURATION_MS: u128 = i64::MAX as u128;

/// Milliseconds are the unit topic settings are reported and stored in, so
/// durations finer than that are refused unless `sub_ms` (a server setting
/// such as `busy_poll`, never reported back) allows them.
fn parse_duration(raw: Raw, sub_ms: bool) -> Result<Limit<Duration>, String> {
    match raw {
        Raw::Int(n) if n >= 0 => Ok(Limit::At(Duration::from_millis(n as u64))),
        Raw::Int(n) => Err(format!("{n} is negative; use \"unlimited\" for no limit")),
        Raw::Text(t) if t.trim() == "unlimited" => Ok(Limit::Unlimited),
        Raw::Text(t) => {
            if let Ok(ms) = t.trim().parse::<u64>() {
                if u128::from(ms) > MAX_DURATION_MS {
                    return Err(format!("{ms} ms is too long: at most {MAX_DURATION_MS}"));
                }
                return Ok(Limit::At(Duration::from_millis(ms)));
            }
            let like = if sub_ms {
                "\"200us\" or \"1ms\""
            } else {
                "\"500ms\", \"30s\" or \"7d\""
            };
            let d = humantime::parse_duration(t.trim())
                .map_err(|e| format!("\"{t}\" is not a duration like {like} ({e})"))?;
            if d.as_millis() > MAX_DURATION_MS {
                return Err(format!(
                    "\"{t}\" is too long: durations are kept in milliseconds, at most {MAX_DURATION_MS}"
                ));
            }
            if !sub_ms && d.subsec_nanos() % 1_000_000 != 0 {
                return Err(format!(
                    "\"{t}\" is finer than a millisecond, the smallest unit of durations"
                ));
            }
            Ok(Limit::At(d))
        }
    }
}

fn limited<T>(v: Limit<T>) -> Result<T, String> {
    match v {
        Limit::At(v) => Ok(v),
        Limit::Unlimited => Err("\"unlimited\" is not allowed here".into()),
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    parse_size(Raw::deserialize(d)?)
        .and_then(limited)
        .map_err(de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(Raw::deserialize(d)?, false)
        .and_then(limited)
        .map_err(de::Error::custom)
}

/// `"auto"`, or a duration (`"0"`: never poll).
fn busy_poll<'de, D: Deserializer<'de>>(d: D) -> Result<BusyPoll, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Text(t) if t.trim() == "auto" => Ok(BusyPoll::AUTO),
        raw => parse_duration(raw, true)
            .and_then(limited)
            .map(BusyPoll::fixed)
            .map_err(de::Error::custom),
    }
}

fn some_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A whole number, given as a TOML integer or a string of digits (as
/// CREATE_TOPIC sends every value).
fn some_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => u32::try_from(n).map_err(|_| format!("{n} is not a count")),
        Raw::Text(t) => t
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{t:?} is not a whole number")),
    }
    .map(Some)
    .map_err(de::Error::custom)
}

fn some_limit_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Limit<u64>>, D::Error> {
    parse_size(Raw::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

fn some_limit_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Limit<Duration>>, D::Error> {
    parse_duration(Raw::deserialize(d)?, false)
        .map(Some)
        .map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:7171");
        assert_eq!(config.topic_defaults().unwrap(), TopicSettings::default());
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../../config/spool.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.topic_defaults().unwrap(), TopicSettings::default());
        // The file names the built-in mode; SPOOL_IO may change the default.
        assert_eq!(config.storage.io, IoMode::BUILT_IN);
        assert_eq!(
            config.storage.cache_bytes,
            StorageConfig::default().cache_bytes
        );
    }

    #[test]
    fn human_units_and_plain_numbers() {
        let config = Config::parse(
            r#"
            [server]
            max_frame_bytes = "8MiB"
            frame_timeout = "1500ms"
            idle_timeout = 60000
            [defaults]
            retention_bytes = "1 GiB"
            retention_ms = "7d"
            segment_ms = "unlimited"
            flush = "interval"
            flush_interval_ms = "250ms"
            [topics.orders]
            retention_ms = "1h 30m"
            max_record_bytes = 4096
            "#,
        )
        .unwrap();
        assert_eq!(config.server.max_frame_bytes, 8 << 20);
        assert_eq!(config.server.frame_timeout, Duration::from_millis(1500));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
        let defaults = config.topic_defaults().unwrap();
        assert_eq!(defaults.retention_bytes, Some(1 << 30));
        assert_eq!(defaults.segment_ms, None);
        assert_eq!(defaults.flush, Flush::Interval);
        let orders = config
            .topic_settings("orders", &TopicOverrides::default())
            .unwrap();
        assert_eq!(orders.retention_ms, Some(Duration::from_secs(5400)));
        assert_eq!(orders.max_record_bytes, 4096);
        assert_eq!(
            orders.retention_bytes,
            Some(1 << 30),
            "inherited from [defaults]"
        );
    }

    #[test]
    fn busy_poll_takes_microseconds_and_plain_numbers_stay_milliseconds() {
        let poll = |v: &str| {
            Config::parse(&format!("[server]\nbusy_poll = {v}"))
                .unwrap()
                .server
                .busy_poll
        };
        let fixed = |d| BusyPoll::Fixed(d);
        assert_eq!(poll("\"200us\""), fixed(Duration::from_micros(200)));
        assert_eq!(poll("\"1ms 500us\""), fixed(Duration::from_micros(1500)));
        assert_eq!(poll("2"), fixed(Duration::from_millis(2)));
        assert_eq!(poll("\"2\""), fixed(Duration::from_millis(2)));
        assert_eq!(poll("\"0\""), BusyPoll::Off);
        assert_eq!(poll("\"10ms\""), fixed(Duration::from_millis(10)));
        assert_eq!(poll("\"auto\""), BusyPoll::AUTO);
        assert_eq!(Config::default().server.busy_poll, BusyPoll::AUTO);
        let config = Config::parse("[server]\nworker_threads = 1").unwrap();
        assert_eq!(config.server.worker_threads, 1);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nmax_conections = 5", "max_conections"),
            ("[defaults]\nretention_ms = \"soon\"", "retention_ms"),
            ("[server]\nmax_frame_bytes = \"lots\"", "max_frame_bytes"),
            ("[topics.a]\nflush = \"sometimes\"", "flush"),
            ("[servr]\nlisten = \"1.2.3.4:5\"", "servr"),
            ("[server]\nlisten = \"nowhere\"", "listen"),
            ("[defaults]\nsegment_bytes = 10", "segment_bytes"),
            ("[server]\nidle_timeout = -5", "idle_timeout"),
            ("[topics.\"a/b\"]\nflush = \"never\"", "a/b"),
            ("[server]\nbusy_poll = \"11ms\"", "busy_poll"),
            ("[server]\nbusy_poll = \"unlimited\"", "busy_poll"),
            ("[server]\nbusy_poll = \"fast\"", "busy_poll"),
            ("[server]\nworker_threads = 5000", "worker_threads"),
            ("[server]\nworker_threads = -1", "worker_threads"),
            // Issue 9, 4.5: these wrapped negative and expired everything.
            ("[defaults]\nretention_ms = \"300000000y\"", "retention_ms"),
            ("[topics.a]\nsegment_ms = \"300000000y\"", "segment_ms"),
            (
                "[defaults]\nretention_ms = \"9223372036854775808\"",
                "retention_ms",
            ),
            ("[server]\nidle_timeout = \"300000000y\"", "idle_timeout"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(
                err.contains(key),
                "error for {text:?} does not name {key}: {err}"
            );
        }
    }

    /// A topic made when max_record_bytes could exceed the frame still
    /// opens (with the limit lowered); a new one is refused.
    #[test]
    fn a_record_limit_beyond_the_frame_is_lowered_at_open_and_refused_at_create() {
        let config = Config::default();
        let big =
            TopicOverrides::from_pairs(&[("max_record_bytes".into(), "16MiB".into())]).unwrap();
        let err = config.topic_settings("t", &big).unwrap_err();
        assert!(err.contains("at most 16776879 bytes"), "{err}");
        let opened = config.open_settings("t", &big).unwrap();
        assert_eq!(opened.max_record_bytes, (16 << 20) - 337);
        let err = Config::parse("[defaults]\nmax_record_bytes = \"16MiB\"").unwrap_err();
        assert!(err.contains("[defaults] max_record_bytes"), "{err}");
    }

    #[test]
    fn layers_apply_in_order() {
        let config = Config::parse(
            "[defaults]\nretention_ms = \"1d\"\nflush = \"never\"\n[topics.t]\nretention_ms = \"2d\"",
        )
        .unwrap();
        let created = TopicOverrides::from_pairs(&[
            ("retention_ms".into(), "3d".into()),
            ("segment_bytes".into(), "1MiB".into()),
            ("retention_bytes".into(), "unlimited".into()),
        ])
        .unwrap();
        let t = config.topic_settings("t", &created).unwrap();
        assert_eq!(
            t.retention_ms,
            Some(Duration::from_secs(2 * 86400)),
            "the file's [topics.t] wins"
        );
        assert_eq!(t.segment_bytes, 1 << 20, "creation settings over defaults");
        assert_eq!(t.flush, Flush::Never, "[defaults] over built-ins");
        let other = config
            .topic_settings("other", &TopicOverrides::default())
            .unwrap();
        assert_eq!(other.retention_ms, Some(Duration::from_secs(86400)));
    }

    #[test]
    fn creation_pairs_are_checked() {
        assert!(
            TopicOverrides::from_pairs(&[("retention".into(), "1d".into())])
                .unwrap_err()
                .contains("retention")
        );
        assert!(TopicOverrides::from_pairs(&[("flush".into(), "maybe".into())]).is_err());
        let dup = [
            ("flush".into(), "never".into()),
            ("flush".into(), "always".into()),
        ];
        let err = TopicOverrides::from_pairs(&[("retention_ms".into(), "300000000y".into())])
            .unwrap_err();
        assert!(
            err.contains("retention_ms") && err.contains("too long"),
            "{err}"
        );
        assert!(TopicOverrides::from_pairs(&dup)
            .unwrap_err()
            .contains("twice"));
        let tiny = TopicOverrides::from_pairs(&[("segment_bytes".into(), "10".into())]).unwrap();
        assert!(tiny.resolve(&TopicSettings::default()).is_err());
    }

    #[test]
    fn settings_report_round_trips_through_creation_pairs() {
        let settings = TopicSettings {
            retention_bytes: Some(5000),
            segment_ms: None,
            ..TopicSettings::default()
        };
        let pairs = settings.to_pairs();
        let back = TopicOverrides::from_pairs(&pairs)
            .unwrap()
            .resolve(&TopicSettings::default())
            .unwrap();
        assert_eq!(back, settings);
    }
}
