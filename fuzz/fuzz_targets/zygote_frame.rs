//! The header-only frames a zygote and its children read from sandboxd
//! (`sock_sandbox::frame`), blocking. Whatever is read is within the
//! limit and is exactly what the documented layout put on the wire: a
//! 4-byte big-endian length, the header, a zero body length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sock_sandbox::frame::read_header;
use sock_sandbox::protocol::MAX_HEADER_BYTES;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok(header) = read_header(&mut stream) {
        assert!(header.len() <= MAX_HEADER_BYTES as usize);
        let consumed = data.len() - stream.len();
        let start = consumed - header.len() - 8;
        let frame = &data[start..consumed];
        assert_eq!(frame[..4], (header.len() as u32).to_be_bytes());
        assert_eq!(frame[4..4 + header.len()], header[..]);
        assert_eq!(frame[4 + header.len()..], [0; 4]);
    }
});
