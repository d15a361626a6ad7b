//! Spool: a single-node, Kafka-style log broker.
//!
//! The [`storage`] module is the segmented commit log, usable on its own.

pub mod storage;
