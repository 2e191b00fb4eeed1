//! Can this process use io_uring at all, and if not, why?
//!
//! io_uring is refused in several distinct ways that all look alike to a user ("operation not
//! permitted"): a kernel built without it, the `kernel.io_uring_disabled` sysctl, a seccomp
//! profile (Docker's default blocks `io_uring_setup`), or a kernel too old for an opcode the
//! runtime submits. [`probe`] creates a tiny ring, asks the kernel which opcodes it supports,
//! and turns a failure into a [`UringUnavailable`] whose message names the cause and the fix.
//! The classification is the pure function [`classify_setup_error`], tested per case.

use io_uring::{opcode, IoUring, Probe};

/// Why io_uring cannot be used here. Each message names the cause and the fix; the CLI maps
/// this type to its own exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UringUnavailable {
    /// `io_uring_setup` is not a known system call.
    #[error("io_uring is not available: the kernel is too old or built without CONFIG_IO_URING (ENOSYS); corvid needs Linux >= 5.19 with io_uring enabled")]
    NoKernelSupport,
    /// `kernel.io_uring_disabled = 2`: nobody may create rings.
    #[error("io_uring is disabled system-wide (kernel.io_uring_disabled = 2): run `sysctl kernel.io_uring_disabled=0` as root")]
    DisabledBySysctl,
    /// `kernel.io_uring_disabled = 1`: only members of the `io_uring_group` group (and root) may.
    #[error("io_uring is restricted to the io_uring group (kernel.io_uring_disabled = 1): run `sysctl kernel.io_uring_disabled=0`, or add this user to the group named by kernel.io_uring_group")]
    RestrictedToGroup,
    /// EPERM without the sysctl: a seccomp filter (container runtime) denies the system calls.
    #[error("io_uring is blocked by a seccomp profile (EPERM from io_uring_setup; Docker's default profile does this): run with a seccomp profile that allows io_uring_setup, io_uring_enter and io_uring_register")]
    Seccomp,
    /// The ring works but lacks an opcode (or feature) the runtime uses.
    #[error("the kernel's io_uring lacks {opcode}: corvid needs Linux >= {needs}")]
    MissingOpcode {
        /// Name of the missing operation, e.g. `IORING_OP_SENDMSG`.
        opcode: &'static str,
        /// Kernel version that introduced it.
        needs: &'static str,
    },
    /// Any other setup failure (e.g. ENOMEM from RLIMIT_MEMLOCK on old kernels).
    #[error("io_uring setup failed: {0}; if this is ENOMEM on a kernel older than 5.12, raise `ulimit -l`")]
    Other(String),
}

/// The operations the runtime submits, with the kernel version that introduced each.
pub const REQUIRED_OPCODES: &[(u8, &str, &str)] = &[
    (opcode::Accept::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT", "5.5"),
    (opcode::Recv::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG", "5.3"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG", "5.3"),
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT", "5.4"),
    (opcode::LinkTimeout::CODE, "IORING_OP_LINK_TIMEOUT", "5.5"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::Close::CODE, "IORING_OP_CLOSE", "5.6"),
];

/// Check that io_uring works here and supports every opcode the runtime uses.
pub fn probe() -> Result<(), UringUnavailable> {
    let ring = match IoUring::new(4) {
        Ok(ring) => ring,
        Err(err) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
            return Err(classify_setup_error(
                err.raw_os_error(),
                sysctl.as_deref(),
                &err.to_string(),
            ));
        }
    };
    if !ring.params().is_feature_ext_arg() {
        // The core loop bounds its shutdown wait with io_uring_enter's timeout argument.
        return Err(UringUnavailable::MissingOpcode {
            opcode: "IORING_FEAT_EXT_ARG",
            needs: "5.11",
        });
    }
    let mut probe = Probe::new();
    if let Err(err) = ring.submitter().register_probe(&mut probe) {
        // IORING_REGISTER_PROBE is 5.6; without it the kernel is too old for our opcodes anyway.
        return Err(match err.raw_os_error() {
            Some(libc::EINVAL) => UringUnavailable::MissingOpcode {
                opcode: "IORING_REGISTER_PROBE",
                needs: "5.6",
            },
            _ => UringUnavailable::Other(format!("io_uring probe failed: {err}")),
        });
    }
    missing_opcode(|code| probe.is_supported(code))
}

/// The first required opcode `supported` says is missing, as an error.
pub fn missing_opcode(supported: impl Fn(u8) -> bool) -> Result<(), UringUnavailable> {
    match REQUIRED_OPCODES
        .iter()
        .find(|(code, _, _)| !supported(*code))
    {
        Some(&(_, opcode, needs)) => Err(UringUnavailable::MissingOpcode { opcode, needs }),
        None => Ok(()),
    }
}

/// Map an `io_uring_setup` failure to its cause. `errno` is the OS error, `io_uring_disabled`
/// the content of `/proc/sys/kernel/io_uring_disabled` if it exists (kernels >= 6.6).
pub fn classify_setup_error(
    errno: Option<i32>,
    io_uring_disabled: Option<&str>,
    message: &str,
) -> UringUnavailable {
    match errno {
        Some(libc::ENOSYS) => UringUnavailable::NoKernelSupport,
        Some(libc::EPERM) => match io_uring_disabled.map(str::trim) {
            Some("2") => UringUnavailable::DisabledBySysctl,
            Some("1") => UringUnavailable::RestrictedToGroup,
            _ => UringUnavailable::Seccomp,
        },
        _ => UringUnavailable::Other(message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_succeeds_on_this_machine() {
        probe().expect("io_uring should work on the dev machine");
    }

    #[test]
    fn classify_each_cause() {
        assert_eq!(
            classify_setup_error(Some(libc::ENOSYS), None, ""),
            UringUnavailable::NoKernelSupport
        );
        assert_eq!(
            classify_setup_error(Some(libc::EPERM), Some("2\n"), ""),
            UringUnavailable::DisabledBySysctl
        );
        assert_eq!(
            classify_setup_error(Some(libc::EPERM), Some("1\n"), ""),
            UringUnavailable::RestrictedToGroup
        );
        assert_eq!(
            classify_setup_error(Some(libc::EPERM), Some("0\n"), ""),
            UringUnavailable::Seccomp
        );
        assert_eq!(
            classify_setup_error(Some(libc::EPERM), None, ""),
            UringUnavailable::Seccomp
        );
        assert_eq!(
            classify_setup_error(Some(libc::ENOMEM), Some("0"), "Cannot allocate memory"),
            UringUnavailable::Other("Cannot allocate memory".into())
        );
        let msg = UringUnavailable::RestrictedToGroup.to_string();
        assert!(
            msg.contains("sysctl kernel.io_uring_disabled=0") && msg.contains("group"),
            "{msg}"
        );
        assert!(UringUnavailable::DisabledBySysctl
            .to_string()
            .contains("sysctl kernel.io_uring_disabled=0"));
        assert!(UringUnavailable::Seccomp
            .to_string()
            .contains("io_uring_setup"));
    }

    #[test]
    fn missing_opcode_names_it() {
        assert_eq!(missing_opcode(|_| true), Ok(()));
        let err = missing_opcode(|code| code != opcode::SendMsg::CODE).unwrap_err();
        assert_eq!(
            err,
            UringUnavailable::MissingOpcode {
                opcode: "IORING_OP_SENDMSG",
                needs: "5.3"
            }
        );
        assert!(err.to_string().contains("IORING_OP_SENDMSG"));
    }

    const CHILD_ENV: &str = "CORVID_PROBE_SECCOMP_CHILD";

    /// Runs the probe in a child process (this test binary re-executed) under a seccomp filter
    /// that makes `io_uring_setup` fail with EPERM, as Docker's default profile does.
    #[test]
    fn probe_under_seccomp_reports_seccomp() {
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "--nocapture",
                "runtime::probe::tests::seccomp_child",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("spawn child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "child did not run: {stdout}");
        assert!(
            stdout.contains("PROBE: io_uring is blocked by a seccomp profile"),
            "{stdout}"
        );
    }

    /// Child half of the test above; only meaningful when spawned by it.
    #[test]
    #[ignore = "spawned by probe_under_seccomp_reports_seccomp"]
    fn seccomp_child() {
        assert_eq!(
            std::env::var(CHILD_ENV).as_deref(),
            Ok("1"),
            "run only as a child"
        );
        deny_io_uring_setup();
        let err = probe().expect_err("probe must fail under the filter");
        println!("PROBE: {err}");
        assert_eq!(err, UringUnavailable::Seccomp);
    }

    /// Install a seccomp filter: `io_uring_setup` fails with EPERM, everything else is allowed.
    fn deny_io_uring_setup() {
        // Classic BPF opcodes: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K.
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        #[cfg(target_arch = "x86_64")]
        const AUDIT_ARCH: u32 = 0xc000_003e;
        #[cfg(target_arch = "aarch64")]
        const AUDIT_ARCH: u32 = 0xc000_00b7;
        let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let filter = [
            ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
            ins(JEQ_K, 0, 3, AUDIT_ARCH),
            ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
            ins(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
            ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
        };
        // SAFETY: plain prctl calls; `prog` and `filter` outlive the call, which copies them.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog
                ),
                0,
                "install seccomp filter: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
