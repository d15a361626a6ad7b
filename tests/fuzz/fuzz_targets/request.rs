//! Every message parser, steered to each API: the first input byte picks
//! the API, the rest is the body (a request) or the whole message (a
//! response to that API).
//!
//! Asserts: no panic; a request that parses re-encodes to exactly its
//! input; a response that parses re-encodes to a frame that parses to the
//! same value, with a correct length prefix.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use spool::protocol::{ApiKey, Request, Response, API_VERSIONS};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let api = API_VERSIONS[selector as usize % API_VERSIONS.len()].0;

    // A request: a valid header of that API at the version the broker
    // speaks, then the body.
    let mut frame = Vec::with_capacity(8 + rest.len());
    frame.extend_from_slice(&(api as u16).to_be_bytes());
    frame.extend_from_slice(&api.version().to_be_bytes());
    frame.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    frame.extend_from_slice(rest);
    if let Ok((header, request)) = Request::parse(BytesMut::from(&frame[..])) {
        assert_eq!(header.correlation_id, 0x0102_0304);
        assert_eq!(request.api_key(), api);
        let mut out = BytesMut::new();
        request.encode(header.correlation_id, &mut out);
        assert_eq!(&out[4..], &frame[..], "re-encoding {request:?}");
    }

    // A response to that API.
    if let Ok(response) = Response::parse(api, Bytes::copy_from_slice(rest)) {
        check_response(api, &response);
    }
});

fn check_response(api: ApiKey, response: &Response) {
    let encoded = response.encode_to_vec();
    let len = u32::from_be_bytes(encoded[..4].try_into().unwrap()) as usize;
    assert_eq!(len, encoded.len() - 4);
    let again = Response::parse(api, Bytes::from(encoded).slice(4..))
        .unwrap_or_else(|e| panic!("{response:?} re-encodes to an unparsable frame: {e}"));
    assert_eq!(&again, response);
}
