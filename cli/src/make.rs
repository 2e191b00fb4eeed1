//! `corvid make PATH`: build a torrent from a file or directory and write it atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use corvid_engine::hash::HashPool;
use corvid_engine::metainfo::{self, BuildOptions};

use corvid_engine::stats::to_json_line;

use crate::output::{human_size, print, progress};
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Create a .torrent from a file or directory",
    long_about = "Create a .torrent from a file or directory.\n\n\
        Files are listed in byte order of their names; .git directories are skipped. \
        Executable files and symbolic links to paths inside the tree are recorded as BEP 47 \
        attributes (x, l); links that are absolute or leave the tree, fifos, sockets and \
        devices are refused; PATH itself may be a symbolic link, which is resolved (the name is then the target's name). \
        --align pads every file to a piece boundary (BEP 47 pad files), as `deploy` does. \
        The piece size is the smallest power of two from 256 KiB to 16 MiB giving at most \
        4000 pieces, unless --piece-size says otherwise.",
    after_help = "Examples:\n  corvid make ./release-42 --tracker http://seed:8998/announce\n  \
        corvid make app.tar -o /tmp/app.torrent --piece-size 4MiB --json"
)]
pub struct Args {
    /// File or directory to share.
    path: PathBuf,
    /// Where to write the torrent [default: NAME.torrent in the current directory].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Tracker announce URL (repeat for more).
    #[arg(long = "tracker", value_name = "URL")]
    trackers: Vec<String>,
    /// Piece size, a power of two >= 16 KiB: 256K, 4M, 4MiB, 1048576.
    #[arg(long, value_name = "SIZE")]
    piece_size: Option<String>,
    /// Torrent name [default: the file or directory name].
    #[arg(long)]
    name: Option<String>,
    /// Hashing threads [default: number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Start every file on a piece boundary with BEP 47 pad files (zeros named `.pad/N`
    /// that exist on no disk), so unchanged files keep their pieces in the next release.
    #[arg(long)]
    align: bool,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let piece_length = match &args.piece_size {
        Some(s) => Some(metainfo::parse_piece_size(s).map_err(Failure::input)?),
        None => None,
    };
    let threads = match args.threads {
        Some(0) => return Err(Failure::input(anyhow!("--threads must be at least 1"))),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let creation_date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let opts = BuildOptions {
        trackers: args.trackers.clone(),
        piece_length,
        name: args.name.clone(),
        creation_date: Some(creation_date),
        align: args.align,
        ..Default::default()
    };

    // Find the name (and fail on a bad path) before hashing, so the output check is early.
    let payload = metainfo::scan(&args.path, opts.name.as_deref()).map_err(Failure::input)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.torrent", payload.name)));
    if !args.force && output.exists() {
        return Err(Failure::output(anyhow!(
            "{} exists (use --force to overwrite)",
            output.display()
        )));
    }
    let lengths = metainfo::payload_lengths(&payload, &opts).map_err(Failure::input)?;
    let bar = progress(lengths.total_length(), "hashing");
    let pool = HashPool::new(threads);
    let built = metainfo::build_payload(&payload, &opts, &pool, &mut |done| bar.set_position(done));
    bar.finish_and_clear();
    let (meta, bytes) = built.map_err(Failure::input)?;
    write_atomically(&output, &bytes, args.force).map_err(Failure::output)?;

    let l = meta.info.lengths;
    if args.json {
        /// `corvid make --json`, fields in the order printed.
        #[derive(serde::Serialize)]
        struct MadeJson<'a> {
            output: &'a str,
            name: &'a str,
            info_hash: String,
            total_size: u64,
            piece_length: u64,
            pieces: u32,
            files: usize,
            /// Only with --align (the shape scripts read stays as it was without).
            #[serde(skip_serializing_if = "is_zero")]
            pad_files: usize,
            trackers: Vec<String>,
        }
        let obj = MadeJson {
            output: &output.to_string_lossy(),
            name: &meta.info.name,
            info_hash: meta.info_hash_hex(),
            total_size: l.total_length(),
            piece_length: l.piece_length(),
            pieces: l.piece_count(),
            files: meta.info.files.len() - meta.info.pad_files.len(),
            pad_files: meta.info.pad_files.len(),
            trackers: meta.trackers(),
        };
        print(&format!("{}\n", to_json_line(&obj)))?;
    } else {
        print(&format!(
            "{}\ninfo-hash {}\n{} in {} files, {} pieces of {}\n",
            output.display(),
            meta.info_hash_hex(),
            human_size(l.total_length()),
            meta.info.files.len() - meta.info.pad_files.len(),
            l.piece_count(),
            human_size(l.piece_length()),
        ))?;
    }
    Ok(Exit::Ok)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Writes `bytes` to a temporary file beside `out`, syncs it, then moves it into place, so
/// a reader never sees half a torrent. Without `force` the final step is a hard link, which
/// fails instead of replacing a file that appeared meanwhile.
fn write_atomically(out: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", out.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        if force {
            std::fs::rename(&tmp, out)
                .with_context(|| format!("cannot move into place {}", out.display()))?;
        } else {
            std::fs::hard_link(&tmp, out).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow!("{} exists (use --force to overwrite)", out.display())
                } else {
                    anyhow!("cannot create {}: {e}", out.display())
                }
            })?;
        }
        Ok(())
    })();
    // After a rename the temp name is gone; after a link (or a failure) remove it.
    let _ = std::fs::remove_file(&tmp);
    result
}
