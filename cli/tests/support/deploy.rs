//! A deploy to "hosts" that are this machine: an `ssh` stand-in that runs the remote
//! command here, and a [`DeployPlan`] for one host through it, so each deploy is a real
//! seeder, tracker and `corvid peer --release-dest` process on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corvid_engine::deploy::fleet::{self, DeployPlan, FleetReport};
use corvid_engine::deploy::ssh::Ssh;
use corvid_engine::node::StopFlag;

use super::corvid_bin;

/// An `ssh` that drops its options and the host and runs the remote command here, as a
/// host whose `$SSH_CONNECTION` says it sees this machine at 127.0.0.1.
pub fn fake_ssh(dir: &Path) -> PathBuf {
    fake_ssh_seen_from(dir, "127.0.0.1")
}

/// [`fake_ssh`] for a host that claims to see this machine at `client`; `ssh -G` says
/// the host is 127.0.0.1.
pub fn fake_ssh_seen_from(dir: &Path, client: &str) -> PathBuf {
    let p = dir.join(format!("fake-ssh-{client}"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n\
             if [ \"$1\" = -G ]; then echo 'hostname 127.0.0.1'; exit 0; fi\n\
             while [ \"$#\" -gt 0 ] && [ \"$1\" != -- ]; do shift; done\n\
             SSH_CONNECTION='{client} 40000 127.0.0.1 22' exec sh -c \"$3\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Release `tag` of `src` to DEST `dest` on one host, "h1", through [`fake_ssh`] (its
/// script written into `dir`); activated, unaligned, no secret. Tests change what they
/// need with struct update syntax.
pub fn plan(dir: &Path, src: &Path, dest: &Path, tag: &str) -> DeployPlan {
    DeployPlan {
        hosts: "h1".into(),
        src: src.to_path_buf(),
        dest: dest.to_path_buf(),
        tag: tag.into(),
        seeder_addr: Some([127, 0, 0, 1].into()),
        activate: true,
        force: false,
        linger: Duration::ZERO,
        stall_timeout: Duration::from_secs(30),
        parallel: 2,
        ssh: Ssh {
            options: Vec::new(),
            program: Some(fake_ssh(dir)),
            control_dir: None,
        },
        ssh_multiplex: true,
        // This very binary on both sides: the probe finds it up to date, nothing installs.
        remote_corvid: corvid_bin().to_str().unwrap().into(),
        local_corvid: corvid_bin(),
        swarm_install_min: 0,
        tracker_port: 0,
        threads: 1,
        secret: None,
        keep: None,
        after_activate: None,
        hook_timeout: Duration::from_secs(60),
        batch: None,
        check: None,
        rollback_on_failure: false,
        align: false,
        base: None,
        peer_network: None,
        hash_cache: None,
        uplink: None,
    }
}

/// Runs the deploy, which must run (each host's outcome is the test's to check).
pub fn deploy(p: &DeployPlan) -> FleetReport {
    let r = fleet::run(p, StopFlag::new(), &mut |_| {}).expect("the deploy runs");
    // The "host" runs this very build (with debug info): up to date, so the stripped
    // copy a deploy ships is never written over the test's own binary.
    assert_eq!(r.install.by_ssh + r.install.by_swarm, 0, "{:?}", r.install);
    r
}
