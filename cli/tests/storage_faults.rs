//! A disk that stops taking writes mid-download, end to end: real `corvid` processes on
//! loopback, the peer's destination on a loop-mounted ext4 that the test shuts down
//! (`FS_IOC_SHUTDOWN`, the ioctl xfstests use to make every later write fail with EIO).
//! Needs root (mount, loop devices), like the tmpfs tests in faults.rs.

mod support;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::release::Release;
use support::{corvid, json_field, json_u64, SlowRelay};

/// Bound on every wait.
const T: Duration = Duration::from_secs(60);

/// A loop-mounted ext4 image, unmounted (which frees the loop device) when dropped, also
/// when the test fails.
struct LoopExt4(PathBuf);

impl LoopExt4 {
    fn mount(image: &Path, at: &Path, size: u64) -> LoopExt4 {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "the failing-disk test loop-mounts ext4 and must run as root (CI does)"
        );
        std::fs::File::create(image)
            .and_then(|f| f.set_len(size))
            .expect("create the image");
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .status()
            .expect("run mkfs.ext4");
        assert!(mkfs.success(), "mkfs.ext4 {image:?}");
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -o loop {image:?} {at:?}");
        LoopExt4(at.to_path_buf())
    }

    /// Every write from now on fails with EIO; what was written before is flushed to the
    /// image first (`FS_SHUTDOWN_FLAGS_DEFAULT`), like a disk that dies after a sync.
    fn shut_down(&self) {
        // _IOR('X', 125, __u32)
        const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        let dir = std::fs::File::open(&self.0).expect("open the mount point");
        let flags: u32 = 0;
        // SAFETY: the ioctl reads one u32 from the pointer, which points at `flags`.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_SHUTDOWN, &flags) };
        assert_eq!(
            rc,
            0,
            "FS_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fails_every_write_stops_the_download_with_a_named_error() {
    let r = Release {
        timeout: T,
        stall: "50s",
        ..Release::new("http://127.0.0.1:9/announce", 4 << 20, "64K", 41)
    };
    let image = r.dest("disk.img");
    let mnt = LoopExt4::mount(&image, &r.dest("disk"), 64 << 20);
    let (seeder, seed_addr) = r.seeder(&["--no-tracker", "--no-announce"]);
    // 1 MiB/s: the download takes a few seconds, so the disk dies half-way.
    let relay = SlowRelay::start(seed_addr, 1 << 20);
    let via = relay.addr.to_string();
    let mut p = r.peer("dying", &mnt.0, &["--no-announce", "--peer", &via]);
    let line = loop {
        let line = p.wait_line("\"event\":\"progress\"", T);
        if json_u64(&line, "have") > 0 {
            break line;
        }
    };
    let have_before = json_u64(&line, "have");
    assert!(
        have_before < r.pieces,
        "finished before the disk died: {line}"
    );
    mnt.shut_down();
    let died = Instant::now();
    let (code, lines, err) = p.wait_exit(T);
    let took = died.elapsed();
    assert_eq!(code, Some(4), "exit code (output error); stderr: {err}");
    let failed = lines
        .iter()
        .find(|l| l.contains("\"event\":\"failed\""))
        .unwrap_or_else(|| panic!("no failed line in {lines:?}"));
    assert_eq!(
        json_field(failed, "kind"),
        Some("storage_write"),
        "{failed}"
    );
    assert_eq!(json_u64(failed, "exit"), 4, "{failed}");
    // The message names the file, the errno and the count, here and on stderr.
    let payload_file = mnt.0.join("payload");
    for text in [failed.as_str(), err.as_str()] {
        assert!(
            text.contains(&*payload_file.to_string_lossy())
                && text.contains("os error 5")
                && text.contains("5 writes of received payload in a row failed"),
            "{text}"
        );
    }
    // Every failure costs a reconnect; five of them, not an endless re-request.
    assert!(took < Duration::from_secs(40), "stopped after {took:?}");
    drop(relay);
    seeder.terminate();
    // What was verified before the disk died is still there: remount the image and
    // verify it.
    drop(mnt);
    let again = LoopExt4::remount(&image, &r.dest("disk"));
    let verify = corvid(&["verify", "--json"])
        .arg(&r.torrent)
        .arg(&again.0)
        .output()
        .expect("run corvid verify");
    let out = String::from_utf8_lossy(&verify.stdout);
    let bad = out.matches("\"piece\":").count() as u64;
    assert!(
        r.pieces - bad >= have_before,
        "{have_before} pieces were verified before the disk died, {} good after: {out}",
        r.pieces - bad
    );
    eprintln!(
        "stopped {took:?} after the disk died ({have_before} of {} pieces verified then, {} good on disk): {}",
        r.pieces,
        r.pieces - bad,
        err.trim()
    );
}

impl LoopExt4 {
    /// Mounts an existing image again (after [`LoopExt4::mount`]'s guard was dropped).
    fn remount(image: &Path, at: &Path) -> LoopExt4 {
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -o loop {image:?} {at:?} again");
        LoopExt4(at.to_path_buf())
    }
}
