//! The deployer's seeder of its own binary, for the swarm install: the binary laid out in
//! a private directory, made into a torrent and seeded from this process.
//!
//! Separate from the parent, which decides the route per host and runs the install
//! phase: this is the one piece of it that owns a seeder and a temporary directory.

use super::*;

/// Why the deployer's seeder of its own binary did not start (the swarm install is then
/// skipped: every host gets corvid over ssh).
#[derive(Debug, thiserror::Error)]
pub enum BinarySeederError {
    #[error("cannot make a directory for the binary's seed: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Torrent(#[from] metainfo::MetainfoError),
    #[error(transparent)]
    Seeder(#[from] SeederError),
}

/// The deployer's seeder of its own binary.
pub(super) struct BinarySeeder {
    pub(super) stop: StopFlag,
    pub(super) thread: std::thread::JoinHandle<Result<NodeReport, NodeError>>,
    pub(super) job: SwarmJob,
    pub(super) pieces: u32,
    /// The snapshot the seeder reads; removed when the seeder is gone.
    pub(super) _dir: tempfile::TempDir,
}

/// Makes the binary's torrent from the bytes in memory (one SHA-1 per piece, the
/// engine's [`metainfo::assemble`]) and seeds a private snapshot of them on `url`'s
/// tracker: the file on disk may be rebuilt meanwhile.
pub(super) fn start_binary_seeder(
    plan: &DeployPlan,
    local: &LocalBinary,
    url: &str,
    addr: IpAddr,
) -> Result<BinarySeeder, BinarySeederError> {
    let dir = tempfile::Builder::new()
        .prefix("corvid-deploy-")
        .tempdir()
        .map_err(BinarySeederError::TempDir)?;
    let file = dir.path().join(BINARY_NAME);
    std::fs::write(&file, &local.bytes).map_err(|source| BinarySeederError::Write {
        path: file.clone(),
        source,
    })?;
    let payload = Payload {
        root: dir.path().to_path_buf(),
        disk_files: vec![FileSpec {
            path: PathBuf::from(BINARY_NAME),
            length: local.bytes.len() as u64,
            pad: false,
        }],
        name: BINARY_NAME.into(),
        multi_file: false,
        executable: vec![true],
        symlinks: Vec::new(),
    };
    let opts = BuildOptions {
        trackers: vec![url.to_string()],
        piece_length: Some(SWARM_PIECE),
        comment: Some(format!("{} binary {}", local.version, local.sha1)),
        ..BuildOptions::default()
    };
    let lengths = metainfo::payload_lengths(&payload, &opts)?;
    let hashes: Vec<[u8; 20]> = local
        .bytes
        .chunks(SWARM_PIECE as usize)
        .map(|c| Sha1::digest(c).into())
        .collect();
    let (m, torrent) = metainfo::assemble(&payload, &opts, lengths, &hashes)?;
    let cfg = seeder_config(
        &m,
        &payload,
        plan.threads,
        plan.secret.clone(),
        url.to_string(),
    );
    let (stop, thread, port) = spawn_seeder(cfg)?;
    Ok(BinarySeeder {
        stop,
        thread,
        job: SwarmJob {
            torrent,
            seeder: SocketAddr::new(addr, port),
            sha1: local.sha1.clone(),
            linger: plan.linger.min(SWARM_LINGER_MAX),
            stall_timeout: plan.stall_timeout,
            timeout: SWARM_TIMEOUT,
            secret: plan.secret.clone(),
        },
        pieces: m.info.lengths.piece_count(),
        _dir: dir,
    })
}
