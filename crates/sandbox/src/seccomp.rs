//! Installing compiled seccomp filters. The rules and their compilation
//! live with sandboxd (`services/sandboxd/seccomp/`); what crosses into a
//! sandbox, over its spec or its socket, is the BPF programs as plain data.
use serde::{Deserialize, Serialize};

/// One BPF instruction (`struct sock_filter`), serializable for the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insn(pub u16, pub u8, pub u8, pub u32);

/// The compiled filters, installed in order.
pub type Programs = Vec<Vec<Insn>>;

/// Installs the filters on every thread of the process (TSYNC). Needs
/// `no_new_privs` or CAP_SYS_ADMIN.
pub fn install(programs: &Programs) -> Result<(), crate::LockdownError> {
    for program in programs {
        let bpf: seccompiler::BpfProgram = program
            .iter()
            .map(|Insn(code, jt, jf, k)| seccompiler::sock_filter {
                code: *code,
                jt: *jt,
                jf: *jf,
                k: *k,
            })
            .collect();
        seccompiler::apply_filter_all_threads(&bpf)
            .map_err(|e| crate::LockdownError::Seccomp(e.to_string()))?;
    }
    Ok(())
}
