//! A check of request bodies before the `kafka-protocol` crate decodes them.
//! The crate reserves room for an array as soon as it reads the array's
//! count (`Vec::with_capacity(count)`), whatever the bytes that follow, so
//! a frame of a few bytes that claims 2^31 elements makes it ask for tens
//! of gigabytes, and the process aborts. This walks the body of each API
//! the listener decodes, at each advertised version, and refuses one whose
//! array counts exceed the bytes that remain (every element takes at least
//! one byte). It decodes nothing: the crate does that once this passed.
//!
//! Layouts (non-flexible versions use i16 string lengths, i32 byte and
//! array lengths, -1 for null; flexible ones use unsigned varints, length +
//! 1, 0 for null, and end each struct with tagged fields):
//!
//! ```text
//! Metadata 0-9     topics [name]; v4+ allow_auto_topic_creation bool;
//!                  v8+ two bools; flexible from 9
//! Produce 0-9      v3+ transactional_id string?; acks i16; timeout_ms i32;
//!                  topic_data [name; partition_data [index i32; records bytes?]];
//!                  flexible from 9
//! Fetch 4-11       replica_id i32; max_wait_ms i32; min_bytes i32; max_bytes i32;
//!                  isolation_level i8; v7+ session_id i32, session_epoch i32;
//!                  topics [topic; partitions [partition i32; v9+ current_leader_epoch i32;
//!                  fetch_offset i64; v5+ log_start_offset i64; partition_max_bytes i32]];
//!                  v7+ forgotten_topics_data [topic; partitions [i32]]; v11+ rack_id
//! ListOffsets 1-7  replica_id i32; v2+ isolation_level i8;
//!                  topics [name; partitions [partition_index i32;
//!                  v4+ current_leader_epoch i32; timestamp i64]]; flexible from 6
//! CreateTopics 2-4 topics [name; num_partitions i32; replication_factor i16;
//!                  assignments [partition_index i32; broker_ids [i32]];
//!                  configs [name; value string?]]; timeout_ms i32; validate_only bool
//! DeleteTopics 1-3 topic_names [name]; timeout_ms i32
//! OffsetForLeaderEpoch 2-4  v3+ replica_id i32; topics [topic; partitions
//!                  [partition i32; current_leader_epoch i32; leader_epoch i32]];
//!                  flexible from 4
//! CreatePartitions 0-3  topics [name; count i32; assignments [broker_ids [i32]]?];
//!                  timeout_ms i32; validate_only bool; flexible from 2
//! DescribeConfigs 1-4  resources [type i8; name; configuration_keys [string]?];
//!                  include_synonyms bool; v3+ include_documentation bool;
//!                  flexible from 4
//! AlterConfigs 0-2 resources [type i8; name; configs [name; value string?]];
//!                  validate_only bool; flexible from 2
//! IncrementalAlterConfigs 0-1  resources [type i8; name; configs [name;
//!                  operation i8; value string?]]; validate_only bool;
//!                  flexible from 1
//! FindCoordinator 0-4  v0-3 key string, v1+ key_type i8;
//!                  v4+ key_type i8, coordinator_keys [string]; flexible from 3
//! OffsetFetch 1-9  v1-7 group_id string; topics [name; partition_indexes [i32]]?
//!                  (null from v2: every topic); v8+ groups [group_id;
//!                  v9+ member_id string?, member_epoch i32; topics [name;
//!                  partition_indexes [i32]]?]; v7+ require_stable bool;
//!                  flexible from 6
//! JoinGroup 0-9    group_id; session_timeout i32; v1+ rebalance_timeout i32;
//!                  member_id; v5+ instance_id string?; protocol_type;
//!                  protocols [name; metadata bytes]; v8+ reason string?;
//!                  flexible from 6
//! SyncGroup 0-5    group_id; generation i32; member_id; v3+ instance_id string?;
//!                  v5+ protocol_type string?, protocol_name string?;
//!                  assignments [member_id; assignment bytes]; flexible from 4
//! LeaveGroup 0-5   v0-2 member_id; v3+ members [member_id; instance_id string?;
//!                  v5+ reason string?]; flexible from 4
//! OffsetCommit 2-8 group_id; generation i32; member_id; v2-4 retention_ms i64;
//!                  v7+ instance_id string?; topics [name; partitions [index i32;
//!                  offset i64; v6+ leader_epoch i32; metadata string?]];
//!                  flexible from 8
//! ListGroups 0-4   v4+ states_filter [string]; flexible from 3
//! DescribeGroups 0-5  groups [string]; v3+ include_authorized_operations bool;
//!                  flexible from 5
//! DeleteGroups 0-2 groups [string]; flexible from 2
//! OffsetDelete 0   group_id; topics [name; partitions [index i32]]
//! ApiVersions 0-4, InitProducerId 0-5, Heartbeat 0-4, DescribeCluster 0-1: no arrays
//! ```

use kafka_protocol::messages::ApiKey;

/// Why a body was refused.
pub type Refusal = String;

struct Walk<'a> {
    bytes: &'a [u8],
    flexible: bool,
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Result<(), Refusal> {
        if n > self.bytes.len() {
            return Err(format!("needs {n} bytes, {} remain", self.bytes.len()));
        }
        self.bytes = &self.bytes[n..];
        Ok(())
    }

    fn i32(&mut self) -> Result<i32, Refusal> {
        let Some(b) = self.bytes.get(..4) else {
            return Err("truncated".into());
        };
        let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.bytes = &self.bytes[4..];
        Ok(v)
    }

    fn i16(&mut self) -> Result<i16, Refusal> {
        let Some(b) = self.bytes.get(..2) else {
            return Err("truncated".into());
        };
        let v = i16::from_be_bytes([b[0], b[1]]);
        self.bytes = &self.bytes[2..];
        Ok(v)
    }

    fn uvarint(&mut self) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for i in 0..5 {
            let Some(&b) = self.bytes.first() else {
                return Err("truncated varint".into());
            };
            self.bytes = &self.bytes[1..];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 5 bytes".into())
    }

    /// A string (or nullable one).
    fn string(&mut self) -> Result<(), Refusal> {
        if self.flexible {
            let n = self.uvarint()?;
            self.take(n.saturating_sub(1) as usize)
        } else {
            let n = self.i16()?;
            self.take(n.max(0) as usize)
        }
    }

    /// Bytes (or nullable bytes).
    fn bytes(&mut self) -> Result<(), Refusal> {
        if self.flexible {
            let n = self.uvarint()?;
            self.take(n.saturating_sub(1) as usize)
        } else {
            let n = self.i32()?;
            self.take(n.max(0) as usize)
        }
    }

    /// An array's count, checked against what remains.
    fn count(&mut self) -> Result<usize, Refusal> {
        let n = if self.flexible {
            self.uvarint()?.saturating_sub(1)
        } else {
            self.i32()?.max(0) as u64
        };
        if n > self.bytes.len() as u64 {
            return Err(format!(
                "an array of {n} elements in {} bytes",
                self.bytes.len()
            ));
        }
        Ok(n as usize)
    }

    fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        for _ in 0..self.count()? {
            element(self)?;
        }
        Ok(())
    }

    fn tagged(&mut self) -> Result<(), Refusal> {
        if !self.flexible {
            return Ok(());
        }
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(size as usize)?;
        }
        Ok(())
    }
}

/// Checks the body (after the request header) of `api` at `version`.
pub fn check(api: ApiKey, version: i16, body: &[u8]) -> Result<(), Refusal> {
    let flexible = match api {
        ApiKey::Metadata => version >= 9,
        ApiKey::Produce => version >= 9,
        ApiKey::Fetch => version >= 12,
        ApiKey::ListOffsets => version >= 6,
        ApiKey::CreateTopics => version >= 5,
        ApiKey::DeleteTopics => version >= 4,
        ApiKey::OffsetForLeaderEpoch => version >= 4,
        ApiKey::CreatePartitions => version >= 2,
        ApiKey::DescribeConfigs => version >= 4,
        ApiKey::AlterConfigs => version >= 2,
        ApiKey::IncrementalAlterConfigs => version >= 1,
        ApiKey::FindCoordinator => version >= 3,
        ApiKey::OffsetFetch => version >= 6,
        ApiKey::JoinGroup => version >= 6,
        ApiKey::SyncGroup | ApiKey::LeaveGroup => version >= 4,
        ApiKey::OffsetCommit => version >= 8,
        ApiKey::ListGroups => version >= 3,
        ApiKey::DescribeGroups => version >= 5,
        ApiKey::DeleteGroups => version >= 2,
        ApiKey::OffsetDelete => false,
        _ => return Ok(()),
    };
    let mut w = Walk {
        bytes: body,
        flexible,
    };
    match api {
        ApiKey::Metadata => w.array(|w| {
            if version >= 10 {
                w.take(16)?;
            }
            w.string()?;
            w.tagged()
        }),
        ApiKey::Produce => {
            if version >= 3 {
                w.string()?;
            }
            w.take(2 + 4)?;
            w.array(|w| {
                w.string()?;
                w.array(|w| {
                    w.take(4)?;
                    w.bytes()?;
                    w.tagged()
                })?;
                w.tagged()
            })
        }
        ApiKey::Fetch => {
            w.take(4 * 4 + 1)?;
            if version >= 7 {
                w.take(8)?;
            }
            let partition =
                4 + if version >= 9 { 4 } else { 0 } + 8 + if version >= 5 { 8 } else { 0 } + 4;
            w.array(|w| {
                w.string()?;
                w.array(|w| w.take(partition))
            })?;
            if version >= 7 {
                w.array(|w| {
                    w.string()?;
                    w.array(|w| w.take(4))
                })?;
            }
            Ok(())
        }
        ApiKey::ListOffsets => {
            w.take(4)?;
            if version >= 2 {
                w.take(1)?;
            }
            let partition = 4 + if version >= 4 { 4 } else { 0 } + 8;
            w.array(|w| {
                w.string()?;
                w.array(|w| {
                    w.take(partition)?;
                    w.tagged()
                })?;
                w.tagged()
            })
        }
        ApiKey::CreateTopics => w.array(|w| {
            w.string()?;
            w.take(4 + 2)?;
            w.array(|w| {
                w.take(4)?;
                w.array(|w| w.take(4))?;
                w.tagged()
            })?;
            w.array(|w| {
                w.string()?;
                w.string()?;
                w.tagged()
            })?;
            w.tagged()
        }),
        ApiKey::DeleteTopics => w.array(|w| w.string()),
        ApiKey::OffsetForLeaderEpoch => {
            if version >= 3 {
                w.take(4)?;
            }
            w.array(|w| {
                w.string()?;
                w.array(|w| {
                    w.take(12)?;
                    w.tagged()
                })?;
                w.tagged()
            })
        }
        ApiKey::CreatePartitions => w.array(|w| {
            w.string()?;
            w.take(4)?;
            w.array(|w| {
                w.array(|w| w.take(4))?;
                w.tagged()
            })?;
            w.tagged()
        }),
        ApiKey::DescribeConfigs => w.array(|w| {
            w.take(1)?;
            w.string()?;
            w.array(|w| w.string())?;
            w.tagged()
        }),
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            let incremental = api == ApiKey::IncrementalAlterConfigs;
            w.array(|w| {
                w.take(1)?;
                w.string()?;
                w.array(|w| {
                    w.string()?;
                    if incremental {
                        w.take(1)?;
                    }
                    w.string()?;
                    w.tagged()
                })?;
                w.tagged()
            })
        }
        // v4+: key_type i8, then the keys; before, one key, no array.
        ApiKey::FindCoordinator if version >= 4 => {
            w.take(1)?;
            w.array(|w| w.string())
        }
        ApiKey::OffsetFetch => {
            let topics = |w: &mut Walk| {
                w.array(|w| {
                    w.string()?;
                    w.array(|w| w.take(4))?;
                    w.tagged()
                })
            };
            if version >= 8 {
                w.array(|w| {
                    w.string()?;
                    if version >= 9 {
                        w.string()?;
                        w.take(4)?;
                    }
                    topics(w)?;
                    w.tagged()
                })
            } else {
                w.string()?;
                topics(&mut w)
            }
        }
        ApiKey::JoinGroup => {
            w.string()?;
            w.take(if version >= 1 { 8 } else { 4 })?;
            w.string()?;
            if version >= 5 {
                w.string()?;
            }
            w.string()?;
            w.array(|w| {
                w.string()?;
                w.bytes()?;
                w.tagged()
            })
        }
        ApiKey::SyncGroup => {
            w.string()?;
            w.take(4)?;
            w.string()?;
            if version >= 3 {
                w.string()?;
            }
            if version >= 5 {
                w.string()?;
                w.string()?;
            }
            w.array(|w| {
                w.string()?;
                w.bytes()?;
                w.tagged()
            })
        }
        ApiKey::LeaveGroup if version >= 3 => {
            w.string()?;
            w.array(|w| {
                w.string()?;
                w.string()?;
                if version >= 5 {
                    w.string()?;
                }
                w.tagged()
            })
        }
        ApiKey::OffsetCommit => {
            w.string()?;
            w.take(4)?;
            w.string()?;
            if version <= 4 {
                w.take(8)?;
            }
            if version >= 7 {
                w.string()?;
            }
            w.array(|w| {
                w.string()?;
                w.array(|w| {
                    w.take(if version >= 6 { 16 } else { 12 })?;
                    w.string()?;
                    w.tagged()
                })?;
                w.tagged()
            })
        }
        ApiKey::ListGroups if version >= 4 => w.array(|w| w.string()),
        ApiKey::DescribeGroups | ApiKey::DeleteGroups => w.array(|w| w.string()),
        ApiKey::OffsetDelete => {
            w.string()?;
            w.array(|w| {
                w.string()?;
                w.array(|w| w.take(4))
            })
        }
        _ => Ok(()),
    }
}
