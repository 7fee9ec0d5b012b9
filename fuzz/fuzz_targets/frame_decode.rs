//! The frames sandboxd reads from a sandbox's runtime (which runs hostile
//! code): a stream of frames decoded until the first error. Every frame
//! decoded is within the limits, encodes back to a frame that decodes to
//! itself, and a body one byte over a reader's limit is refused.
#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use sock_sandbox::protocol::{
    MAX_BODY_BYTES, MAX_HEADER_BYTES, ProtocolError, read_frame, read_frame_within, write_frame,
};

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok((header, body)) = block_on(read_frame(&mut stream)) {
        assert!(body.len() <= MAX_BODY_BYTES as usize);
        let mut wire = Vec::new();
        block_on(write_frame(&mut wire, &header, &body)).expect("a decoded frame encodes");
        let header_len = u32::from_be_bytes(wire[..4].try_into().expect("4 bytes"));
        if header_len > MAX_HEADER_BYTES {
            // Only a header that gets longer when encoded again could.
            panic!("a decoded header encodes to {header_len} bytes, over the limit");
        }
        let again = block_on(read_frame_within(&mut wire.as_slice(), body.len() as u32))
            .expect("an encoded frame decodes");
        assert_eq!(again, (header.clone(), body.clone()));
        if let Some(under) = (body.len() as u32).checked_sub(1) {
            let refused = block_on(read_frame_within(&mut wire.as_slice(), under));
            assert!(
                matches!(refused, Err(ProtocolError::TooLarge { part: "body", .. })),
                "a body over the reader's limit was not refused: {refused:?}"
            );
        }
    }
});
