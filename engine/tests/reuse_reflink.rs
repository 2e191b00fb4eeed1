//! Base-release reuse on a filesystem with reflinks: an XFS image (`mkfs.xfs -m
//! reflink=1`, from xfsprogs, in scripts/test-deps) loop-mounted in a temporary directory.
//! Unchanged files must be cloned (`FICLONE`), not copied: the report says so, the bytes
//! are identical, and the kernel reports the extents of base and clone as shared.
//!
//! Needs root and loop devices. Without them (not root, no mkfs.xfs, a container that
//! cannot mount a loop device) the test prints why and returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use corvid_engine::hash::HashPool;
use corvid_engine::metainfo::{build, BuildOptions};
use corvid_engine::reuse::{fill, Base};
use corvid_engine::storage::Storage;
use corvid_engine::wire::Bitfield;

const PL: u64 = 16384;

/// The mount, undone on drop (also when an assertion fails); `-o loop` frees the loop
/// device with it.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Makes and mounts the XFS image below `dir`, or says why it cannot.
fn mount_xfs(dir: &Path) -> Result<Mounted, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (mount needs it)".into());
    }
    let img = dir.join("xfs.img");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    // XFS wants at least 300 MiB; the file is sparse.
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(320 << 20))
        .map_err(|e| e.to_string())?;
    let run = |what: &str, c: &mut Command| -> Result<(), String> {
        match c.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("{what} did not run: {e}")),
        }
    };
    run(
        "mkfs.xfs -m reflink=1",
        Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img),
    )?;
    run(
        "mount -o loop",
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt),
    )?;
    Ok(Mounted(mnt))
}

#[test]
fn unchanged_files_are_cloned_on_a_filesystem_with_reflinks() {
    let t = tempfile::tempdir().unwrap();
    let m = match mount_xfs(t.path()) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED unchanged_files_are_cloned_on_a_filesystem_with_reflinks: {why}");
            return;
        }
    };
    let root = m.0.clone();
    let (old, new) = (root.join("old"), root.join("new/rel"));
    let same = noise(5 * PL as usize + 3, 1);
    let also = noise(3 * PL as usize, 2);
    for dir in [&old, &new] {
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/same"), &same).unwrap();
        std::fs::write(dir.join("also"), &also).unwrap();
    }
    std::fs::write(new.join("fresh"), noise(PL as usize, 3)).unwrap();
    let pool = HashPool::new(2);
    let opts = BuildOptions {
        piece_length: Some(PL),
        align: true,
        ..Default::default()
    };
    let (meta, _) = build(&new, &opts, &pool, &mut |_| {}).unwrap();
    let dest = root.join("dest");
    let storage = Arc::new(Storage::create(&dest, &meta.info.files, meta.info.lengths).unwrap());
    let mut have = Bitfield::new(meta.info.lengths.piece_count());
    let base = Base {
        dir: old.clone(),
        strip: PathBuf::from("rel"),
        sealed: None,
    };
    let r = fill(&storage, &meta.info.pieces, &mut have, &base, &pool);
    assert_eq!(r.same_files, 2, "{r:?}");
    assert_eq!(r.reflinked_files, 2, "the clone path was not taken: {r:?}");
    assert_eq!(r.rejected_pieces, 0, "{r:?}");
    // Every piece of both (the aligned torrent counts a tail's pad zeros in its piece).
    assert_eq!(r.reused_pieces, 6 + 3, "{r:?}");
    assert_eq!(r.reused_bytes, 9 * PL, "{r:?}");
    for rel in ["d/same", "also"] {
        let clone = dest.join("rel").join(rel);
        assert_eq!(
            std::fs::read(&clone).unwrap(),
            std::fs::read(old.join(rel)).unwrap()
        );
        // FIEMAP: every extent of the clone is shared with the base.
        let out = Command::new("filefrag").arg("-v").arg(&clone).output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let extents: Vec<&str> = text
                    .lines()
                    .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
                    .collect();
                assert!(!extents.is_empty(), "{text}");
                assert!(extents.iter().all(|l| l.contains("shared")), "{text}");
            }
            _ => eprintln!("filefrag unavailable: sharing not checked beyond the report"),
        }
        // A clone is a file of its own: writing it leaves the base as it was.
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(old.join(rel)).unwrap(),
            std::fs::metadata(&clone).unwrap(),
        );
        assert_ne!(a.ino(), b.ino());
    }
    drop(storage);
    let clone = dest.join("rel/d/same");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&clone)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 0).unwrap();
    assert_eq!(std::fs::read(old.join("d/same")).unwrap(), same);
}
