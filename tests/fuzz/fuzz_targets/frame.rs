//! A request frame as the broker's connection hands it to the parser (the
//! bytes after the length prefix): the header, then `Request::parse`.
//!
//! Asserts: no panic; the header parses exactly when 8 bytes are there; a
//! parse failure maps to one of the three request error codes; a request
//! that parses re-encodes to exactly the bytes it came from (the encoding
//! has no optional fields, so it is canonical).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spool::protocol::{ErrorCode, Request, RequestHeader, REQUEST_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let header = RequestHeader::parse(data);
    assert_eq!(header.is_ok(), data.len() >= REQUEST_HEADER_LEN);
    match Request::parse(BytesMut::from(data)) {
        Err(e) => assert!(matches!(
            e.code(),
            ErrorCode::InvalidRequest | ErrorCode::UnsupportedApi | ErrorCode::UnsupportedVersion
        )),
        Ok((parsed_header, request)) => {
            let header = header.expect("a request has a header");
            assert_eq!(parsed_header, header);
            let api = spool::protocol::ApiKey::from_u16(header.api_key).expect("parsed");
            assert_eq!(header.api_version, api.version());
            assert_eq!(request.api_key() as u16, header.api_key);
            let mut out = BytesMut::new();
            request.encode(header.correlation_id, &mut out);
            assert_eq!(&out[..4], &(data.len() as u32).to_be_bytes());
            assert_eq!(&out[4..], data, "re-encoding {request:?}");
        }
    }
});
