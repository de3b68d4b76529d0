//! A seccomp filter that makes bpf(2) fail with ENOSYS, as in a container that blocks it or on
//! a kernel built without CONFIG_BPF_SYSCALL.

use std::{io, mem::offset_of};

use libc::{
    seccomp_data, sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET,
    BPF_W, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO,
};

/// `AUDIT_ARCH_*` of the architecture this was built for: syscall numbers are per architecture.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Installs the filter on the calling thread (and what it starts afterwards). Irreversible:
/// only for a child process.
pub fn deny_bpf() -> io::Result<()> {
    let mut filter = [
        stmt(
            BPF_LD | BPF_W | BPF_ABS,
            offset_of!(seccomp_data, arch) as u32,
        ),
        // Another architecture's syscall numbers mean other things: leave them alone.
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        stmt(
            BPF_LD | BPF_W | BPF_ABS,
            offset_of!(seccomp_data, nr) as u32,
        ),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_bpf as u32, 0, 1),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `prog` points at a filter that outlives the call (the kernel
    // copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
