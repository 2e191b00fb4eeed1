//! `corvid verify TORRENT PATH`: check payload data against a torrent's piece hashes.
//!
//! PATH is normally the directory that holds the payload (the torrent's `NAME` inside it);
//! it may also point at the payload itself (the directory, or the single file, under any
//! name). Files that are missing or of the wrong size are reported without hashing them;
//! otherwise every piece is hashed and each bad piece is reported with the files it covers.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use std::sync::Arc;

use corvid_engine::hash::HashPool;
use corvid_engine::metainfo::{FileSpec, Metainfo};
use corvid_engine::storage::Storage;

use corvid_engine::stats::to_json_line;

use crate::output::{print, printable, progress};
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Check payload files against a torrent's piece hashes",
    long_about = "Check payload files against a torrent's piece hashes.\n\n\
        PATH is the directory containing the payload (PATH/NAME for a torrent named NAME), \
        or the payload itself: the top directory of a multi-file torrent or the file of a \
        single-file one, under any name. Exit code 0 means every piece matched; 1 means \
        pieces are bad or files missing, each reported by piece index and file path.",
    after_help = "Examples:\n  corvid verify release-42.torrent /srv/releases\n  \
        corvid verify release-42.torrent /srv/releases/release-42 --json"
)]
pub struct Args {
    /// The .torrent file.
    torrent: PathBuf,
    /// Directory containing the payload, or the payload itself.
    path: PathBuf,
    /// Hashing threads [default: number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Where the payload is: the root to map from and the file list relative to it.
pub(crate) fn locate(m: &Metainfo, path: &Path) -> Result<(PathBuf, Vec<FileSpec>), Failure> {
    let info = &m.info;
    if path.is_dir() && path.join(&info.name).exists() {
        return Ok((path.to_path_buf(), info.files.clone()));
    }
    if info.multi_file && path.is_dir() {
        // PATH is the payload directory itself: drop the name from every path.
        let files = info
            .files
            .iter()
            .map(|f| FileSpec {
                path: f.path.components().skip(1).collect(),
                length: f.length,
                pad: f.pad,
            })
            .collect();
        return Ok((path.to_path_buf(), files));
    }
    if !info.multi_file && path.is_file() {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| Failure::input(anyhow!("{} is not a file path", path.display())))?;
        let files = vec![FileSpec {
            path: PathBuf::from(name),
            length: info.lengths.total_length(),
            pad: false,
        }];
        return Ok((parent, files));
    }
    Err(Failure::input(anyhow!(
        "payload not found: {} is neither a directory containing {:?} nor the payload {}",
        path.display(),
        info.name,
        if info.multi_file { "directory" } else { "file" }
    )))
}

/// A file problem found before hashing.
fn file_problem(root: &Path, f: &FileSpec) -> Option<String> {
    if f.pad {
        // Zeros by definition, on no disk: storage maps them (see `FileSpec::pad`).
        return None;
    }
    match std::fs::metadata(root.join(&f.path)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing".into()),
        Err(e) => Some(format!("unreadable: {e}")),
        Ok(m) if !m.is_file() => Some("not a regular file".into()),
        Ok(m) if m.len() != f.length => {
            Some(format!("is {} bytes, torrent says {}", m.len(), f.length))
        }
        Ok(_) => None,
    }
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let m = crate::info::load(&args.torrent)?;
    let (root, files) = locate(&m, &args.path)?;
    let info = &m.info;
    let threads = match args.threads {
        Some(0) => return Err(Failure::input(anyhow!("--threads must be at least 1"))),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    let problems: Vec<(usize, String)> = files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| file_problem(&root, f).map(|p| (i, p)))
        .collect();

    let piece_ok: Vec<bool> = if problems.is_empty() {
        let bar = progress(info.lengths.total_length(), "verifying");
        let r = hash_check(&m, &root, &files, threads, &mut |n| bar.set_position(n));
        bar.finish_and_clear();
        r?
    } else {
        // Some files cannot be mapped; mark the pieces they touch bad, leave the rest
        // unchecked (reported as such).
        let bad_files: Vec<usize> = problems.iter().map(|(i, _)| *i).collect();
        info.lengths
            .pieces()
            .map(|p| !info.files_of_piece(p).iter().any(|f| bad_files.contains(f)))
            .collect()
    };
    let hashed = problems.is_empty();

    let bad_pieces: Vec<u32> = piece_ok
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .map(|(i, _)| i as u32)
        .collect();
    // Per file: how many of its pieces are bad (a file is bad if any piece is).
    // Only hashing can blame a file that is present; without it only `problems` are known.
    let mut file_bad = vec![0u32; files.len()];
    for &p in bad_pieces.iter().filter(|_| hashed) {
        if let Some(pi) = info.lengths.piece(p) {
            for f in info.files_of_piece(pi) {
                file_bad[f] += 1;
            }
        }
    }
    let all_ok = bad_pieces.is_empty() && problems.is_empty();
    let shown = |i: usize| root.join(&files[i].path).display().to_string();
    let piece_files = |p: u32| -> Vec<usize> {
        info.lengths
            .piece(p)
            .map(|pi| info.files_of_piece(pi))
            .unwrap_or_default()
    };

    if args.json {
        /// `corvid verify --json`, fields in the order printed.
        #[derive(serde::Serialize)]
        struct VerifyJson<'a> {
            ok: bool,
            info_hash: String,
            pieces: u32,
            hashed: bool,
            bad_pieces: Vec<BadPiece>,
            bad_files: Vec<BadFile<'a>>,
        }
        #[derive(serde::Serialize)]
        struct BadPiece {
            piece: u32,
            files: Vec<String>,
        }
        #[derive(serde::Serialize)]
        struct BadFile<'a> {
            path: String,
            bad_pieces: u32,
            problem: &'a str,
        }
        let bad_p = bad_pieces
            .iter()
            .map(|&p| BadPiece {
                piece: p,
                files: piece_files(p).into_iter().map(shown).collect(),
            })
            .collect();
        let mut bad_f = Vec::new();
        for (i, n) in file_bad.iter().enumerate() {
            let problem = problems
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, p)| p.as_str());
            if *n > 0 || problem.is_some() {
                bad_f.push(BadFile {
                    path: shown(i),
                    bad_pieces: *n,
                    problem: problem.unwrap_or("hash mismatch"),
                });
            }
        }
        let obj = VerifyJson {
            ok: all_ok,
            info_hash: m.info_hash_hex(),
            pieces: info.lengths.piece_count(),
            hashed,
            bad_pieces: bad_p,
            bad_files: bad_f,
        };
        print(&format!("{}\n", to_json_line(&obj)))?;
    } else {
        // Paths come from the torrent: escaped for the terminal (JSON escapes its own).
        let shown = |i: usize| printable(&shown(i));
        let mut s = String::new();
        for (i, p) in &problems {
            s += &format!("file {}: {p}\n", shown(*i));
        }
        for &p in &bad_pieces {
            let names: Vec<String> = piece_files(p).into_iter().map(shown).collect();
            s += &format!("bad piece {p}: {}\n", names.join(", "));
        }
        for (i, n) in file_bad.iter().enumerate() {
            if *n > 0 && !problems.iter().any(|(j, _)| *j == i) {
                s += &format!("bad file {}: {n} bad pieces\n", shown(i));
            }
        }
        if all_ok {
            s += &format!(
                "ok: all {} pieces match ({} files)\n",
                info.lengths.piece_count(),
                files.len()
            );
        } else if hashed {
            s += &format!(
                "FAILED: {} of {} pieces bad\n",
                bad_pieces.len(),
                info.lengths.piece_count()
            );
        } else {
            s += &format!(
                "FAILED: {} files missing or wrong size; {} pieces affected, the rest not hashed\n",
                problems.len(),
                bad_pieces.len()
            );
        }
        print(&s)?;
    }
    Ok(if all_ok { Exit::Ok } else { Exit::DataBad })
}

/// Maps the payload read-only and checks every piece on the hasher pool.
fn hash_check(
    m: &Metainfo,
    root: &Path,
    files: &[FileSpec],
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<bool>, Failure> {
    let storage = Storage::open_readonly(root, files, m.info.lengths).map_err(Failure::input)?;
    let pool = HashPool::new(threads);
    Ok(pool.verify_all(&Arc::new(storage), &m.info.pieces, progress))
}
