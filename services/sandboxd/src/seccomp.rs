//! The seccomp filters of every function process, written as readable
//! rules in `seccomp/sandbox.json` (seccompiler's JSON format) and compiled
//! to BPF once per sandboxd start. The programs travel to each sandbox init
//! in its spec; the runtime's process installs them right after
//! `no_new_privs`, just before it execs Python.
//!
//! Default allow (Python needs much of the kernel), with the dangerous
//! calls answered by EPERM so Python sees an ordinary OSError: mounts,
//! ptrace, kexec, modules, bpf, perf, keyrings, namespaces (unshare, setns,
//! clone with a CLONE_NEW* flag), reboot, swap, clock setting. clone3 gets
//! ENOSYS, as its flags cannot be inspected: glibc then falls back to
//! clone, whose flags can.
use serde::{Deserialize, Serialize};

const RULES: &str = include_str!("../seccomp/sandbox.json");

/// One BPF instruction (`struct sock_filter`), serializable for the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Insn(u16, u8, u8, u32);

/// The compiled filters, installed in order.
pub(crate) type Programs = Vec<Vec<Insn>>;

#[derive(Debug, thiserror::Error)]
#[error("seccomp rules: {0}")]
pub struct SeccompError(String);

/// Compiles the rules for this machine's architecture.
pub(crate) fn compile() -> Result<Programs, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))?;
    let mut map = seccompiler::compile_from_json(RULES.as_bytes(), arch)
        .map_err(|e| SeccompError(e.to_string()))?;
    // A fixed order, so every sandbox gets the same stack of filters.
    let mut names: Vec<String> = map.keys().cloned().collect();
    names.sort();
    Ok(names
        .iter()
        .filter_map(|name| map.remove(name))
        .map(|program| {
            program
                .into_iter()
                .map(|i| Insn(i.code, i.jt, i.jf, i.k))
                .collect()
        })
        .collect())
}

/// Installs the filters on the calling thread. Needs `no_new_privs`.
pub(crate) fn install(programs: &Programs) -> Result<(), SeccompError> {
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
        seccompiler::apply_filter(&bpf).map_err(|e| SeccompError(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_compile_for_this_machine() {
        let programs = compile().expect("compile");
        assert_eq!(programs.len(), 2, "deny and clone3");
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn the_rules_name_every_call_the_issue_denies() {
        for syscall in [
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "unshare",
            "setns",
            "reboot",
            "swapon",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "clone3",
        ] {
            assert!(
                RULES.contains(&format!("\"syscall\": \"{syscall}\"")),
                "{syscall} is not in the rules"
            );
        }
    }
}
