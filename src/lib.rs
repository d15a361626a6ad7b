//! Spool: a single-node, Kafka-style log broker.
//!
//! The [`storage`] module is the segmented commit log, usable on its own;
//! [`protocol`] is the wire format shared by the broker and its clients.

pub mod broker;
pub mod protocol;
pub mod storage;

/// The batch format, shared by the storage layer and the protocol.
pub use storage::batch;
