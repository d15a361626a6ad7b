//! Async Rust client for the Spool log broker.
//!
//! - [`Client`]: one pipelined connection (re-established with backoff when
//!   it breaks) and the admin calls: create, delete, list, describe topics.
//! - [`Producer`]: batches records per topic by size and linger time and
//!   resolves each send to its record's offset.
//! - [`Consumer`]: reads a topic from an offset, the earliest, the latest or
//!   a timestamp, long-polling at the end, with an offset-reset policy.
//! - [`GroupConsumer`]: a member of a consumer group; the broker shares the
//!   topic's partitions among the members, and each resumes from the
//!   group's commits (automatic or [`GroupConsumer::commit`]).
//! - [`partitioner`]: Kafka's default partitioner (murmur2 of the key, sticky
//!   batches without one), for when topics have partitions.
//!
//! Produce, as the topic's `flush` mode promises, then consume:
//!
//! ```no_run
//! use spool_client::{Client, Consumer, ConsumerConfig, Producer, ProducerConfig, StartAt};
//!
//! # async fn example() -> Result<(), spool_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7171").await?;
//! client.create_topic("orders", &[("retention_ms", "7d")]).await?;
//!
//! let producer = Producer::new(client.clone(), ProducerConfig::default());
//! let delivery = producer.send("orders", Some(b"customer-1"), b"one pizza").await?;
//! producer.flush().await?;
//! let offset = delivery.await?; // acknowledged: stored at this offset
//!
//! let mut consumer = Consumer::new(client, "orders", StartAt::Earliest, ConsumerConfig::default());
//! let record = consumer.next().await?; // waits for a record if there is none yet
//! assert_eq!(record.offset, offset);
//! assert_eq!(record.value.as_deref(), Some(&b"one pizza"[..]));
//! # Ok(())
//! # }
//! ```

mod client;
mod connection;
mod consumer;
mod error;
mod group;
pub mod partitioner;
mod producer;

pub use client::{Client, ClientConfig, Offsets, PendingProduce, Produced};
pub use consumer::{decode, Consumer, ConsumerConfig, Message, OffsetReset, RecordStream, StartAt};
pub use error::{ClientError, Result};
pub use group::{Committed, GroupConfig, GroupConsumer, Rebalance};
pub use producer::{Delivery, Producer, ProducerConfig};
pub use spool::batch::{self, BatchBuilder, Codec, Record};
pub use spool::net::BusyPoll;
pub use spool::protocol::{
    Acks, ErrorCode, GroupDescription, GroupMember, ListedGroup, OffsetSpec, PartitionDescription,
    TopicDescription, MAX_PRODUCE_OVERHEAD,
};
