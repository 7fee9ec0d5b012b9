//! The frames sandboxd sends a sandbox (`limits`, `invoke`, `http`,
//! `fork`), built from the fuzzer's choices of every field: each encodes,
//! and decodes back to the same header and body, or, when its header is
//! over the limit a reader allows, is refused as too large, never misread.
#![no_main]

use arbitrary::Arbitrary;
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use sock_sandbox::protocol::{
    ForkKind, ForkRequest, Header, MAX_HEADER_BYTES, ProtocolError, read_frame, write_frame,
};
use sock_sandbox::seccomp::Insn;

#[derive(Arbitrary, Debug)]
enum Sent {
    Limits(u32),
    Invoke(String),
    Http {
        call_id: String,
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        root_path: String,
    },
    Fork {
        kind: u8,
        package_dirs: Vec<String>,
        imports: Vec<String>,
        entry_file: String,
        environment: Vec<String>,
        uid: u32,
        gid: u32,
        seccomp: Vec<Vec<(u16, u8, u8, u32)>>,
        cgroups: usize,
    },
}

impl Sent {
    fn header(self) -> Header {
        match self {
            Sent::Limits(max_result_bytes) => Header::Limits { max_result_bytes },
            Sent::Invoke(call_id) => Header::Invoke { call_id },
            Sent::Http {
                call_id,
                method,
                path,
                query,
                headers,
                root_path,
            } => Header::Http {
                call_id,
                method,
                path,
                query,
                headers,
                root_path,
            },
            Sent::Fork {
                kind,
                package_dirs,
                imports,
                entry_file,
                environment,
                uid,
                gid,
                seccomp,
                cgroups,
            } => Header::Fork(ForkRequest {
                kind: [ForkKind::Function, ForkKind::Zygote, ForkKind::Spare]
                    [usize::from(kind % 3)],
                package_dirs,
                imports,
                entry_file,
                environment,
                uid,
                gid,
                seccomp: seccomp
                    .into_iter()
                    .map(|program| {
                        program
                            .into_iter()
                            .map(|(code, jt, jf, k)| Insn(code, jt, jf, k))
                            .collect()
                    })
                    .collect(),
                cgroups,
            }),
        }
    }
}

fuzz_target!(|sent: (Sent, Vec<u8>)| {
    let (sent, body) = sent;
    let header = sent.header();
    let mut wire = Vec::new();
    block_on(write_frame(&mut wire, &header, &body)).expect("a small frame encodes");
    let header_len = u32::from_be_bytes(wire[..4].try_into().expect("4 bytes"));
    match block_on(read_frame(&mut wire.as_slice())) {
        Ok(decoded) => assert_eq!(decoded, (header, body)),
        Err(ProtocolError::TooLarge { part: "header", .. }) => {
            assert!(header_len > MAX_HEADER_BYTES);
        }
        Err(e) => panic!("a frame sandboxd encodes does not decode: {e}"),
    }
});
