//! The broker: a tokio TCP server speaking Spool's protocol over the topics
//! in its data directory.
//!
//! [`Broker::start`] binds, loads every topic (recovering what a crash
//! left), and starts the accept loop and the retention task. The returned
//! [`RunningBroker`] tells the bound address and shuts down gracefully:
//! stop accepting, let each connection answer the requests it has read
//! (long polls return early), then flush, sync and close every topic.

pub mod assigned;
pub mod config;
mod connection;
pub mod consumer_groups;
mod group_handler;
pub mod groups;
pub(crate) mod handler;
pub mod topic;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use config::{Config, Flush, ServerConfig, TopicOverrides, TopicSettings};
pub use topic::{Topic, TopicError, Topics};

/// Why the broker could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load topics: {0}")]
    Topics(#[from] TopicError),
    #[error("topic loading task failed: {0}")]
    Task(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the committed offsets: {0}")]
    Offsets(#[source] crate::storage::StorageError),
}

/// State shared by every connection.
pub struct Broker {
    config: Arc<Config>,
    topics: Arc<Topics>,
    /// `max_inflight_bytes`, one permit per byte of request being read or
    /// dispatched.
    budget: Arc<Semaphore>,
    /// `max_response_bytes`, one permit per byte of fetched batches held
    /// for a response not yet written.
    responses: Arc<Semaphore>,
    groups: Arc<consumer_groups::Groups>,
    shutdown: watch::Receiver<bool>,
}

impl Broker {
    /// The consumer groups and their committed offsets.
    pub(crate) fn groups(&self) -> &Arc<consumer_groups::Groups> {
        &self.groups
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    /// `max_inflight_bytes`: what requests being read or handled may hold.
    pub(crate) fn budget(&self) -> &Arc<Semaphore> {
        &self.budget
    }

    /// Binds the listener, loads the topics and starts serving.
    pub async fn start(config: Config) -> Result<RunningBroker, StartError> {
        Broker::start_with(config, crate::storage::OsVfs::shared()).await
    }

    /// [`Broker::start`] with the topics on another file system (tests use
    /// simulated disks, slow or failing ones).
    pub async fn start_with(
        config: Config,
        vfs: std::sync::Arc<dyn crate::storage::Vfs>,
    ) -> Result<RunningBroker, StartError> {
        config.check().map_err(StartError::Config)?;
        let config = Arc::new(config);
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let kafka_listener = match config.kafka.listen_addr().map_err(StartError::Config)? {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let loading = Arc::clone(&config);
        let topics_vfs = Arc::clone(&vfs);
        let topics = tokio::task::spawn_blocking(move || Topics::load_with(loading, topics_vfs))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        let topics = Arc::new(topics);
        let (groups_config, groups_topics) = (Arc::clone(&config), Arc::clone(&topics));
        let (groups, replayed) = tokio::task::spawn_blocking(move || {
            consumer_groups::Groups::open(groups_config, groups_topics, vfs)
        })
        .await
        .map_err(|e| StartError::Task(e.to_string()))?
        .map_err(StartError::Offsets)?;
        if replayed.cut_bytes > 0 {
            tracing::warn!(
                bytes = replayed.cut_bytes,
                "committed offsets: a torn last write was cut (it was never acknowledged)"
            );
        }
        let groups = Arc::new(groups);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let broker = Arc::new(Broker {
            budget: Arc::new(Semaphore::new(config.server.max_inflight_bytes as usize)),
            responses: Arc::new(Semaphore::new(config.server.max_response_bytes as usize)),
            config: Arc::clone(&config),
            topics: Arc::clone(&topics),
            groups: Arc::clone(&groups),
            shutdown: shutdown.clone(),
        });
        let group_task = tokio::spawn(Arc::clone(&groups).run(shutdown.clone()));
        let retention = tokio::spawn(topic::run_retention(
            Arc::clone(&topics),
            config.server.retention_check_interval,
            shutdown.clone(),
        ));
        let responses = Arc::clone(&broker.responses);
        let mut kafka = None;
        if let Some(listener) = kafka_listener {
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            let data_dir = config.server.data_dir.clone();
            let (cluster_id, producer_ids) = tokio::task::spawn_blocking(move || {
                let id = crate::kafka::cluster_id(&data_dir)
                    .map_err(|e| format!("cluster id in the data directory: {e}"))?;
                let ids = crate::kafka::producer_ids::ProducerIds::open(&data_dir)
                    .map_err(|e| format!("producer ids in the data directory: {e}"))?;
                Ok::<_, String>((id, Arc::new(ids)))
            })
            .await
            .map_err(|e| StartError::Task(e.to_string()))?
            .map_err(StartError::Config)?;
            let front = Arc::new(crate::kafka::Front {
                broker: Arc::clone(&broker),
                advertised: crate::kafka::advertised(&config.kafka, bound),
                cluster_id,
                producer_ids,
            });
            let task = tokio::spawn(crate::kafka::accept_loop(front, listener, shutdown.clone()));
            kafka = Some((bound, task));
        }
        let serving = Arc::clone(&broker);
        let server = tokio::spawn(accept_loop(
            "spool",
            listener,
            config.server.max_connections,
            shutdown,
            move |socket, _, shutdown| connection::serve(Arc::clone(&serving), socket, shutdown),
        ));
        tracing::info!(addr = %local_addr, topics = topics.names().len(), "broker started");
        Ok(RunningBroker {
            local_addr,
            kafka,
            responses,
            topics,
            shutdown: shutdown_tx,
            server,
            retention,
            groups: group_task,
            config,
        })
    }
}

/// A started broker.
pub struct RunningBroker {
    local_addr: SocketAddr,
    /// The Kafka listener's address and accept task, when it is on.
    kafka: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    responses: Arc<Semaphore>,
    topics: Arc<Topics>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    /// The coordinator's deadlines; syncs the committed offsets as it ends.
    groups: tokio::task::JoinHandle<()>,
    config: Arc<Config>,
}

impl RunningBroker {
    /// The address it listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    /// The Kafka listener's address (the real port for port 0), if it is on.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().map(|(a, _)| *a)
    }

    /// Fetched bytes held for responses not yet written, across all
    /// connections (bounded by `max_response_bytes`).
    pub fn response_bytes_held(&self) -> u64 {
        let free = self.responses.available_permits() as u64;
        self.config.server.max_response_bytes.saturating_sub(free)
    }

    /// Stops accepting, waits (up to `shutdown_timeout`) for connections to
    /// answer what they have read, then closes every topic.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let _ = self.shutdown.send(true);
        let grace = self.config.server.shutdown_timeout;
        if let Some((_, kafka)) = self.kafka {
            let _ = tokio::time::timeout(grace, kafka).await;
        }
        if tokio::time::timeout(grace, self.server).await.is_err() {
            tracing::warn!(
                ?grace,
                "connections still open after the shutdown timeout; closing anyway"
            );
        }
        let _ = self.retention.await;
        let _ = self.groups.await;
        let topics = self.topics;
        let _ = tokio::task::spawn_blocking(move || topics.close_all()).await;
        tracing::info!("shutdown complete");
    }
}

/// Accepts connections until shutdown, then waits for them to finish: at
/// most `max_connections` at a time, each served by `serve`. Spool's
/// listener and the Kafka one (`name`, for the logs) share it.
pub(crate) async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, typically: back off a little
                // rather than spin.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(listener = name, %peer, limit = max_connections, "refusing connection: max_connections reached");
            drop(socket);
            continue;
        };
        let served = serve(socket, peer, shutdown.clone());
        connections.spawn(async move {
            served.await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
