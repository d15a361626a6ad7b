//! The Kafka listener's request decoding (`spool::kafka::decode`): the
//! header, the bounds check of `src/kafka/bounds.rs`, then the
//! `kafka-protocol` crate's decoder. The first two input bytes pick one of
//! the advertised APIs and a version in its range; a valid header follows
//! (no client id, and the tagged-field count of a flexible header), then
//! the rest of the input as the body.
//!
//! Asserts: no panic, and no abort: the crate reserves an array's room
//! from its count, and a count past the frame's size used to make it ask
//! for tens of gigabytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spool::kafka::{decode, SUPPORTED};

fuzz_target!(|data: &[u8]| {
    let [a, v, rest @ ..] = data else {
        return;
    };
    let (api, min, max) = SUPPORTED[*a as usize % SUPPORTED.len()];
    let version = min + (*v as i16).rem_euclid(max - min + 1);
    let mut frame = Vec::with_capacity(10 + rest.len());
    frame.extend_from_slice(&(api as i16).to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    if api.request_header_version(version) >= 2 {
        frame.push(0);
    }
    frame.extend_from_slice(rest);
    let _ = decode(&mut Bytes::from(frame));
});
