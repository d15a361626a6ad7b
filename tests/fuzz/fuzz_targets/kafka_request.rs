//! The Kafka listener's request decoding (`spool::kafka::decode`): the
//! header, the bounds check of `src/kafka/bounds.rs`, then the
//! `kafka-protocol` crate's decoder, on the frame `spool::kafka::fuzz_frame`
//! makes of the input: its first two bytes pick one of the advertised APIs
//! and a version in its range, a valid header follows, then the rest of
//! the input as the body.
//!
//! Asserts: no panic, and no abort: the crate reserves an array's room
//! from its count, and a count past the frame's size used to make it ask
//! for tens of gigabytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool::kafka::{decode, fuzz_frame};

fuzz_target!(|data: &[u8]| {
    if let Some((_, _, mut frame)) = fuzz_frame(data) {
        let _ = decode(&mut frame);
    }
});
