//! Spool: a single-node, Kafka-style log broker.
//!
//! - [`batch`]: Kafka's RecordBatch v2, the one batch format: on disk, on
//!   Spool's wire and on Kafka's.
//! - [`protocol`]: the wire protocol, shared by the broker and its clients.
//! - [`storage`] (feature `storage`): the segmented commit log, usable on
//!   its own, without any networking.
//! - [`broker`] (feature `broker`, the default): the TCP server.
//! - [`net`] (feature `net`, part of `broker`): socket helpers the broker
//!   and the client share.
//!
//! A client needs only `batch` and `protocol`: depend on this crate with
//! `default-features = false` and none of the server is compiled.

pub mod batch;
pub mod protocol;

#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "broker")]
pub mod kafka;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "storage")]
pub mod storage;
