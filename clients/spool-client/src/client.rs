//! The client handle: a connection that is re-established with backoff when
//! it breaks, and the admin calls.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool::net::BusyPoll;
use spool::protocol::{Acks, OffsetSpec, OffsetsTopic, Request, ResponseBody, TopicDescription};
use tokio::net::TcpStream;

use crate::connection::{Connection, ResponseFuture};
use crate::error::{ClientError, Result};

/// How the client connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Limit on one connection attempt: the TCP connection, then the
    /// broker's answer to the opening handshake.
    pub connect_timeout: Duration,
    /// Limit on one request's response (a fetch adds its own `max_wait`).
    pub request_timeout: Duration,
    /// First delay before reconnecting after a failure; doubles each time.
    pub backoff_initial: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// Give up reconnecting after this long.
    pub reconnect_for: Duration,
    /// Whether the connection polls its socket for the next response before
    /// its task sleeps. The default, [`BusyPoll::AUTO`], polls only while
    /// responses come back faster than a wake-up costs (a caller sending one
    /// request at a time, quickly); an idle connection never spins. The
    /// broker's `server.busy_poll` is the same on its side.
    pub busy_poll: BusyPoll,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            reconnect_for: Duration::from_secs(30),
            busy_poll: BusyPoll::AUTO,
        }
    }
}

/// A handle to one broker. Cheap to clone: clones share the connection
/// ([`Client::with_own_connection`] makes one that does not; each
/// [`Consumer`](crate::Consumer) does so by default).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    config: ClientConfig,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Client {
    /// Connects to `addr` (`host:port`) and checks that it speaks Spool's
    /// protocol. Fails at once if the broker cannot be reached.
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    pub async fn connect_with(addr: &str, config: ClientConfig) -> Result<Client> {
        let conn = dial(addr, &config).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                addr: addr.to_owned(),
                config,
                conn: tokio::sync::Mutex::new(Some(Arc::new(conn))),
            }),
        })
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// A client of the same broker, with the same configuration, that opens
    /// a connection of its own on first use (clones share one connection:
    /// its responses come back in request order).
    pub fn with_own_connection(&self) -> Client {
        Client {
            inner: Arc::new(Inner {
                addr: self.inner.addr.clone(),
                config: self.inner.config.clone(),
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The largest frame the broker reads (its `max_frame_bytes`, from the
    /// handshake); larger requests fail with [`ClientError::TooLarge`]
    /// before they are sent.
    pub async fn max_frame_bytes(&self) -> Result<u32> {
        Ok(self.connection().await?.max_frame())
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current connection, re-established (with backoff) if it broke.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_broken()) {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let config = &self.inner.config;
        let deadline = tokio::time::Instant::now() + config.reconnect_for;
        let mut delay = config.backoff_initial;
        loop {
            match dial(&self.inner.addr, config).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    *slot = Some(Arc::clone(&conn));
                    tracing::debug!(addr = %self.inner.addr, "reconnected");
                    return Ok(conn);
                }
                Err(e) if tokio::time::Instant::now() + delay >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(addr = %self.inner.addr, error = %e, ?delay, "reconnecting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(config.backoff_max);
                }
            }
        }
    }

    /// Sends a request and waits for its response (within the request
    /// timeout plus `extra`); a broker error becomes `ClientError::Broker`.
    pub(crate) async fn call_within(
        &self,
        request: Request,
        extra: Duration,
    ) -> Result<ResponseBody> {
        let conn = self.connection().await?;
        let limit = self.inner.config.request_timeout + extra;
        let response = tokio::time::timeout(limit, conn.call(&request))
            .await
            .map_err(|_| ClientError::Timeout(limit))??;
        response.body.map_err(ClientError::from)
    }

    pub(crate) async fn call(&self, request: Request) -> Result<ResponseBody> {
        self.call_within(request, Duration::ZERO).await
    }

    /// Creates a topic. `settings` are `key = value` pairs as in the
    /// broker's `[defaults]` (e.g. `("retention_ms", "7d")`).
    pub async fn create_topic(&self, topic: &str, settings: &[(&str, &str)]) -> Result<()> {
        let settings = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expect_empty(
            self.call(Request::CreateTopic {
                topic: topic.to_owned(),
                settings,
            })
            .await?,
        )
    }

    /// Changes a topic's settings while it runs: `set` as in
    /// [`Client::create_topic`], `reset` keys back to the broker's default.
    pub async fn alter_topic(
        &self,
        topic: &str,
        set: &[(&str, &str)],
        reset: &[&str],
    ) -> Result<()> {
        expect_empty(
            self.call(Request::AlterTopic {
                topic: topic.to_owned(),
                set: set
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                reset: reset.iter().map(|k| k.to_string()).collect(),
            })
            .await?,
        )
    }

    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        expect_empty(
            self.call(Request::DeleteTopic {
                topic: topic.to_owned(),
            })
            .await?,
        )
    }

    pub async fn list_topics(&self) -> Result<Vec<String>> {
        match self.call(Request::ListTopics).await? {
            ResponseBody::Topics(names) => Ok(names),
            other => Err(unexpected(other)),
        }
    }

    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        match self
            .call(Request::DescribeTopic {
                topic: topic.to_owned(),
            })
            .await?
        {
            ResponseBody::Description(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    /// The offset `spec` names in one partition, with the partition's
    /// current range.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Offsets> {
        let found = self
            .list_offsets_of(topic, &[(partition, spec)])
            .await?
            .pop()
            .ok_or_else(|| ClientError::Unexpected("no partition in the answer".into()))?;
        found.1
    }

    /// LIST_OFFSETS for several partitions of a topic in one request: each
    /// partition's answer, in the order asked.
    pub async fn list_offsets_of(
        &self,
        topic: &str,
        partitions: &[(u32, OffsetSpec)],
    ) -> Result<Vec<(u32, Result<Offsets>)>> {
        let request = Request::ListOffsets {
            topics: vec![OffsetsTopic {
                topic: topic.to_owned(),
                partitions: partitions.to_vec(),
            }],
        };
        match self.call(request).await? {
            ResponseBody::Offsets(topics) => Ok(topics
                .into_iter()
                .flat_map(|t| t.partitions)
                .map(|p| {
                    let result = p.result.map_err(ClientError::from).map(|o| Offsets {
                        offset: o.offset,
                        log_start: o.log_start,
                        log_end: o.log_end,
                    });
                    (p.partition, result)
                })
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// How many partitions `topic` has.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.describe_topic(topic).await?.partitions.len() as u32)
    }
}

impl Client {
    /// Sends one finished batch (see [`spool::batch::BatchBuilder`]) and
    /// waits for the broker's acknowledgement. The batch goes to the socket
    /// as it is, without a copy.
    pub async fn produce(&self, topic: &str, partition: u32, batch: &Bytes) -> Result<Produced> {
        self.send_batch(topic, partition, batch, Acks::Commit)
            .await?
            .wait()
            .await
    }

    /// Sends one finished batch and returns without waiting, so that many
    /// can be in flight on the connection (they are stored in the order
    /// sent). With `Acks::None` the broker sends no answer: the returned
    /// [`PendingProduce`] then resolves to an error that only says so.
    pub async fn send_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: &Bytes,
        acks: Acks,
    ) -> Result<PendingProduce> {
        let conn = self.connection().await?;
        let limit = self.inner.config.request_timeout;
        // A broker that stops reading must not hold the sender forever.
        let response =
            tokio::time::timeout(limit, conn.send_produce(topic, partition, acks, batch))
                .await
                .map_err(|_| ClientError::Timeout(limit))??;
        Ok(PendingProduce { response, limit })
    }
}

/// Where a produced batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: u64,
    /// The time the broker stamped on the batch (ms since the epoch) for a
    /// topic with `timestamp_type = "log_append"`; `None` when the records
    /// keep their producer timestamps.
    pub log_append_time: Option<i64>,
}

/// The acknowledgement of a batch sent with [`Client::send_batch`].
pub struct PendingProduce {
    response: ResponseFuture,
    limit: Duration,
}

impl PendingProduce {
    pub async fn wait(self) -> Result<Produced> {
        let response = tokio::time::timeout(self.limit, self.response)
            .await
            .map_err(|_| ClientError::Timeout(self.limit))?
            .map_err(|_| {
                ClientError::Disconnected("no answer (acks = 0, or the connection closed)".into())
            })??;
        let produced = response.produced()?;
        Ok(Produced {
            base_offset: produced.base_offset,
            log_append_time: (produced.log_append_time >= 0).then_some(produced.log_append_time),
        })
    }
}

/// An answer to [`Client::list_offsets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub offset: u64,
    pub log_start: u64,
    pub log_end: u64,
}

/// Connects and does the handshake (on every reconnection too: whatever
/// now listens at `addr` must speak Spool's protocol before it gets a
/// request).
async fn dial(addr: &str, config: &ClientConfig) -> Result<Connection> {
    let failed = |reason: String| ClientError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let limit = config.connect_timeout;
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| failed(format!("timed out after {limit:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let conn = Connection::open(stream, config.busy_poll).await;
    // Part of connecting: something that accepts but does not speak Spool
    // (an HTTP server, a stuck process) fails here, within the connect limit.
    let answer = tokio::time::timeout(limit, conn.call(&Request::ApiVersions))
        .await
        .map_err(|_| {
            failed(format!(
                "no answer to the opening handshake within {limit:?} (is it a Spool broker?)"
            ))
        })?;
    match answer.and_then(|r| r.body.map_err(ClientError::from)) {
        Ok(ResponseBody::ApiVersions {
            max_frame_bytes, ..
        }) => {
            conn.set_max_frame(max_frame_bytes);
            Ok(conn)
        }
        Ok(other) => Err(failed(format!("handshake answered with {other:?}"))),
        Err(e) => Err(failed(format!(
            "the answer to the opening handshake is not Spool's ({e}; is it a Spool broker?)"
        ))),
    }
}

fn expect_empty(body: ResponseBody) -> Result<()> {
    match body {
        ResponseBody::Empty => Ok(()),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn unexpected(body: ResponseBody) -> ClientError {
    ClientError::Unexpected(format!("{body:?}"))
}
