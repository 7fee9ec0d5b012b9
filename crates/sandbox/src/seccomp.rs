//! The seccomp filters of sandboxed processes, written as readable rules in
//! seccompiler's JSON format and compiled to BPF once per sandboxd start.
//! The programs travel to each sandbox in its init spec or, for a zygote's
//! child, over its own socket, as plain data ([`Programs`]); [`Lockdown`]
//! installs them last (`install_seccomp`), on every thread, for every birth path.
//! Zygotes install the zygote profile instead.
//!
//! [`Lockdown`]: crate::Lockdown
//!
//! An allow-list, modelled on Docker's default profile (moby's
//! `profiles/seccomp/default.json`): `seccomp/sandbox.json` names every call
//! a function may make; `seccomp/README.md` says how the list was derived
//! and how to extend it. The programs, in install order:
//!
//! - `allow`: the allowed calls, by exact number on x86_64. Anything else
//!   gets ENOSYS rather than Docker's EPERM: ENOSYS is what an older kernel
//!   answers for a call it lacks, and glibc and CPython probe new calls
//!   (clone3, faccessat2, statx, ...) and fall back on exactly that error,
//!   where EPERM would surface as a failure. clone3 is left out on purpose:
//!   its flags sit in a struct no filter can read, so glibc must fall back
//!   to clone, whose flags can be. x32 calls (bit `0x4000_0000` set) match
//!   no number here, so they get ENOSYS too; other architectures (int 0x80)
//!   are killed by seccompiler's architecture check.
//! - `families`: `socket` and `socketpair` only for AF_UNIX, AF_INET and
//!   AF_INET6; any other family (vsock, netlink, packet, ...) gets
//!   EAFNOSUPPORT, as from a kernel built without it, which glibc's
//!   getaddrinfo copes with.
//! - `namespaces`: `clone` with a CLONE_NEW* flag gets EPERM.
//! - `deny`: the calls a function must never make (`NOT_ALLOWED` in the
//!   unit tests, the attack surface: io_uring, pidfd_getfd, kcmp, mounts,
//!   namespaces, ptrace, bpf, keyrings, ...) get EPERM, an ordinary
//!   "operation not permitted" OSError rather than "no such call". They are
//!   not on the allow-list either; this program only picks their errno. It
//!   must be installed after `allow`: among filters that all answer with an
//!   errno, the kernel takes the most recently installed one's.
//!
//! A zygote (root of its own user namespace, see sandboxd's `zygote.rs`) gets
//! [`Profile::Zygote`]: the same, plus exactly the calls it makes to set up
//! its children (`seccomp/zygote.json`: chroot, unshare, setns, sethostname,
//! mount and the new mount API), and clone with CLONE_NEW* flags.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The function profile, a complete seccompiler document.
const RULES: &str = include_str!("../seccomp/sandbox.json");
/// The zygote's additions: its `allow` rules join the function's `allow`
/// and leave the `deny` program.
const ZYGOTE_RULES: &str = include_str!("../seccomp/zygote.json");

/// Install order: `deny` after `allow`, so its EPERM wins over ENOSYS.
const ORDER: [&str; 4] = ["allow", "families", "namespaces", "deny"];

/// One BPF instruction (`struct sock_filter`), serializable for the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insn(pub u16, pub u8, pub u8, pub u32);

/// The compiled filters, installed in order.
pub type Programs = Vec<Vec<Insn>>;

#[derive(Debug, thiserror::Error)]
#[error("seccomp rules: {0}")]
pub struct SeccompError(String);

/// Which processes the filters are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Function code, installers: unprivileged, no capabilities.
    Function,
    /// A zygote: root of its own user namespace, which chroots, unshares,
    /// mounts and sets the hostname for each child it forks.
    Zygote,
}

/// Compiles the function profile for this machine's architecture.
pub fn compile() -> Result<Programs, SeccompError> {
    compile_profile(Profile::Function)
}

/// Compiles `profile` for this machine's architecture.
pub fn compile_profile(profile: Profile) -> Result<Programs, SeccompError> {
    let document = Value::Object(document(profile)?).to_string();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))?;
    let mut map = seccompiler::compile_from_json(document.as_bytes(), arch)
        .map_err(|e| SeccompError(e.to_string()))?;
    let programs = ORDER
        .iter()
        .filter_map(|name| map.remove(*name))
        .map(|program| {
            program
                .into_iter()
                .map(|i| Insn(i.code, i.jt, i.jf, i.k))
                .collect()
        })
        .collect();
    // A program named outside ORDER would otherwise be dropped silently.
    match map.keys().next() {
        Some(name) => Err(SeccompError(format!(
            "program {name:?} has no place in {ORDER:?}"
        ))),
        None => Ok(programs),
    }
}

/// The seccompiler document of `profile`.
fn document(profile: Profile) -> Result<Map<String, Value>, SeccompError> {
    let mut document = parse(RULES, "sandbox.json")?;
    if profile == Profile::Zygote {
        let mut zygote = parse(ZYGOTE_RULES, "zygote.json")?;
        let extra = rules_mut(&mut zygote, "allow")?.clone();
        let names: Vec<&Value> = extra.iter().map(|rule| &rule["syscall"]).collect();
        rules_mut(&mut document, "deny")?.retain(|rule| !names.contains(&&rule["syscall"]));
        rules_mut(&mut document, "allow")?.extend(extra.iter().cloned());
        // Its only rules are clone's CLONE_NEW* flags, which a zygote
        // needs for its children's namespaces.
        document.remove("namespaces");
    }
    Ok(document)
}

fn parse(text: &str, file: &str) -> Result<Map<String, Value>, SeccompError> {
    serde_json::from_str(text).map_err(|e| SeccompError(format!("{file}: {e}")))
}

/// The rules of program `name` in a document.
fn rules_mut<'a>(
    document: &'a mut Map<String, Value>,
    name: &str,
) -> Result<&'a mut Vec<Value>, SeccompError> {
    document
        .get_mut(name)
        .and_then(|program| program.get_mut("filter"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| SeccompError(format!("no program {name:?} with a filter list")))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Calls no function may make, whatever anyone adds to the allow-list:
    /// each answered EPERM by the `deny` program.
    const NOT_ALLOWED: &[&str] = &[
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "pidfd_getfd",
        "kcmp",
        "process_madvise",
        "userfaultfd",
        "perf_event_open",
        "bpf",
        "keyctl",
        "add_key",
        "request_key",
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "open_tree",
        "move_mount",
        "mount_setattr",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "acct",
        "quotactl",
        "quotactl_fd",
        "syslog",
        "open_by_handle_at",
        "sethostname",
        "setdomainname",
    ];

    /// Of those, exactly what a zygote needs for its children.
    const ZYGOTE_NEEDS: &[&str] = &[
        "chroot",
        "unshare",
        "setns",
        "sethostname",
        "mount",
        "umount2",
        "fsopen",
        "fsconfig",
        "fsmount",
        "move_mount",
        "open_tree",
        "mount_setattr",
    ];

    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: i64 = 0x4000_0000;
    const ALLOW: u32 = 0x7fff_0000;
    const CLONE_NEWUSER: u64 = 0x1000_0000;
    const SIGCHLD: u64 = 17;
    const THREAD_FLAGS: u64 = 0x003d_0f00; // glibc's pthread_create clone flags

    fn errno(e: i32) -> u32 {
        0x0005_0000 | e as u32
    }

    /// What a stack of programs answers for a call: cBPF as the kernel runs
    /// it, limited to the instructions seccompiler emits.
    fn verdict(programs: &Programs, nr: i64, args: [u64; 6]) -> u32 {
        let load = |offset: u32| -> u32 {
            match offset {
                0 => nr as u32,
                4 => AUDIT_ARCH_X86_64,
                16..=63 => {
                    let arg = args[(offset as usize - 16) / 8];
                    if offset.is_multiple_of(8) {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load of seccomp_data offset {offset}"),
            }
        };
        let run = |program: &[Insn]| -> u32 {
            let (mut pc, mut acc) = (0usize, 0u32);
            loop {
                let Insn(code, jt, jf, k) = program[pc];
                pc += 1;
                let jump = |taken: bool| usize::from(if taken { jt } else { jf });
                match code {
                    0x20 => acc = load(k),        // ld [k]
                    0x54 => acc &= k,             // and #k
                    0x05 => pc += k as usize,     // ja k
                    0x15 => pc += jump(acc == k), // jeq #k
                    0x25 => pc += jump(acc > k),  // jgt #k
                    0x35 => pc += jump(acc >= k), // jge #k
                    0x06 => return k,             // ret #k
                    _ => panic!("BPF opcode {code:#x} not emulated"),
                }
            }
        };
        // The kernel runs the newest filter first and keeps the first of
        // the most restrictive actions (kernel/seccomp.c, seccomp_run_filters).
        let mut answer = ALLOW;
        for program in programs.iter().rev() {
            let ret = run(program);
            if ((ret & 0xffff_0000) as i32) < ((answer & 0xffff_0000) as i32) {
                answer = ret;
            }
        }
        answer
    }

    fn call(programs: &Programs, nr: i64) -> u32 {
        verdict(programs, nr, [0; 6])
    }

    fn names(profile: Profile, program: &str) -> BTreeSet<String> {
        let mut document = document(profile).expect("document");
        rules_mut(&mut document, program)
            .expect("program")
            .iter()
            .map(|rule| rule["syscall"].as_str().expect("a name").to_owned())
            .collect()
    }

    #[test]
    fn both_profiles_compile_for_this_machine() {
        for (profile, count) in [(Profile::Function, 4), (Profile::Zygote, 3)] {
            let programs = compile_profile(profile).expect("compile");
            assert_eq!(programs.len(), count, "{profile:?}");
            assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
        assert_eq!(
            compile().expect("compile"),
            compile_profile(Profile::Function).expect("compile")
        );
    }

    #[test]
    fn nothing_not_allowed_is_on_the_allow_list() {
        let allowed = names(Profile::Function, "allow");
        for name in NOT_ALLOWED {
            assert!(!allowed.contains(*name), "{name} is on the allow-list");
        }
        assert!(!allowed.contains("clone3"), "clone3 must get ENOSYS");
    }

    #[test]
    fn the_deny_program_names_exactly_what_is_not_allowed() {
        let expected: BTreeSet<String> = NOT_ALLOWED.iter().map(|s| s.to_string()).collect();
        assert_eq!(names(Profile::Function, "deny"), expected);
    }

    #[test]
    fn the_zygote_gets_exactly_what_it_needs_on_top() {
        let function = names(Profile::Function, "allow");
        let zygote = names(Profile::Zygote, "allow");
        let extra: BTreeSet<&str> = zygote.difference(&function).map(String::as_str).collect();
        assert_eq!(extra, ZYGOTE_NEEDS.iter().copied().collect());
        assert!(function.is_subset(&zygote));
        let still_denied: BTreeSet<String> = NOT_ALLOWED
            .iter()
            .filter(|name| !ZYGOTE_NEEDS.contains(name))
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names(Profile::Zygote, "deny"), still_denied);
        for name in still_denied {
            assert!(!zygote.contains(&name), "the zygote may call {name}");
        }
    }

    #[test]
    fn the_attacks_fail_and_ordinary_calls_pass() {
        let programs = compile().expect("compile");
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_pidfd_getfd,
            libc::SYS_kcmp,
            libc::SYS_process_madvise,
            libc::SYS_userfaultfd,
            libc::SYS_bpf,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_keyctl,
        ] {
            assert_eq!(call(&programs, nr), errno(libc::EPERM), "syscall {nr}");
        }
        for family in [libc::AF_VSOCK, libc::AF_NETLINK, libc::AF_PACKET, 0] {
            let args = [family as u64, 1, 0, 0, 0, 0];
            let want = errno(libc::EAFNOSUPPORT);
            assert_eq!(
                verdict(&programs, libc::SYS_socket, args),
                want,
                "socket({family})"
            );
            assert_eq!(verdict(&programs, libc::SYS_socketpair, args), want);
        }
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
            let args = [family as u64, 1, 0, 0, 0, 0];
            assert_eq!(
                verdict(&programs, libc::SYS_socket, args),
                ALLOW,
                "socket({family})"
            );
            assert_eq!(verdict(&programs, libc::SYS_socketpair, args), ALLOW);
        }
        let clone = |flags: u64| verdict(&programs, libc::SYS_clone, [flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(SIGCHLD), ALLOW, "fork");
        assert_eq!(clone(THREAD_FLAGS), ALLOW, "a thread");
        assert_eq!(clone(CLONE_NEWUSER | SIGCHLD), errno(libc::EPERM));
        assert_eq!(clone(libc::CLONE_NEWNET as u64), errno(libc::EPERM));
        assert_eq!(call(&programs, libc::SYS_clone3), errno(libc::ENOSYS));
        // x32: the same calls with bit 30 set are no allowed number.
        for nr in [
            libc::SYS_getpid,
            libc::SYS_read,
            libc::SYS_mount,
            libc::SYS_socket,
        ] {
            assert_eq!(
                call(&programs, nr | X32_SYSCALL_BIT),
                errno(libc::ENOSYS),
                "x32 {nr}"
            );
        }
        // A call on no list at all, as a new kernel's would be.
        assert_eq!(
            call(&programs, libc::SYS_lookup_dcookie),
            errno(libc::ENOSYS)
        );
        assert_eq!(call(&programs, 1000), errno(libc::ENOSYS));
        for nr in [
            libc::SYS_getpid,
            libc::SYS_read,
            libc::SYS_mmap,
            libc::SYS_futex,
            libc::SYS_mbind,
        ] {
            assert_eq!(call(&programs, nr), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn the_zygote_may_set_up_children_and_nothing_more() {
        let programs = compile_profile(Profile::Zygote).expect("compile");
        let clone = |flags: u64| verdict(&programs, libc::SYS_clone, [flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(CLONE_NEWUSER | SIGCHLD), ALLOW);
        for nr in [
            libc::SYS_chroot,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_sethostname,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_fsopen,
            libc::SYS_fsmount,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_prctl,
            libc::SYS_seccomp,
            libc::SYS_capset,
            libc::SYS_setresuid,
            libc::SYS_setgroups,
        ] {
            assert_eq!(call(&programs, nr), ALLOW, "syscall {nr}");
        }
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_bpf,
            libc::SYS_ptrace,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_keyctl,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_pidfd_getfd,
            libc::SYS_kcmp,
            libc::SYS_process_madvise,
            libc::SYS_pivot_root,
        ] {
            assert_eq!(call(&programs, nr), errno(libc::EPERM), "syscall {nr}");
        }
        let vsock = [libc::AF_VSOCK as u64, 1, 0, 0, 0, 0];
        assert_eq!(
            verdict(&programs, libc::SYS_socket, vsock),
            errno(libc::EAFNOSUPPORT)
        );
        assert_eq!(call(&programs, libc::SYS_clone3), errno(libc::ENOSYS));
        assert_eq!(
            call(&programs, libc::SYS_mount | X32_SYSCALL_BIT),
            errno(libc::ENOSYS)
        );
    }
}
