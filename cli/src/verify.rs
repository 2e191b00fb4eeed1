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
    let threads = match args.threads {
        Some(0) => return Err(Failure::input(anyhow!("--threads must be at least 1"))),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let f = check(&m, &root, &files, threads)?;
    let out = Shown {
        m: &m,
        root: &root,
        files: &files,
    };
    if args.json {
        print(&format!("{}\n", to_json_line(&out.json(&f))))?;
    } else {
        print(&out.text(&f))?;
    }
    Ok(if f.all_ok() { Exit::Ok } else { Exit::DataBad })
}

/// What a check found.
struct Findings {
    /// Files that cannot be mapped (missing, wrong size, not a file), by index.
    problems: Vec<(usize, String)>,
    bad_pieces: Vec<u32>,
    /// Per file: how many of its pieces are bad (only hashing can blame a present file).
    file_bad: Vec<u32>,
    /// Whether the pieces were hashed (not when some file cannot be mapped).
    hashed: bool,
}

impl Findings {
    fn all_ok(&self) -> bool {
        self.bad_pieces.is_empty() && self.problems.is_empty()
    }

    fn problem(&self, i: usize) -> Option<&str> {
        self.problems
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, p)| p.as_str())
    }
}

/// Hashes every piece when every file can be mapped; otherwise marks the pieces the
/// unmappable files touch bad and leaves the rest unchecked (reported as such).
fn check(
    m: &Metainfo,
    root: &Path,
    files: &[FileSpec],
    threads: usize,
) -> Result<Findings, Failure> {
    let info = &m.info;
    let problems: Vec<(usize, String)> = files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| file_problem(root, f).map(|p| (i, p)))
        .collect();
    let hashed = problems.is_empty();
    let piece_ok: Vec<bool> = if hashed {
        let bar = progress(info.lengths.total_length(), "verifying");
        let r = hash_check(m, root, files, threads, &mut |n| bar.set_position(n));
        bar.finish_and_clear();
        r?
    } else {
        let bad_files: Vec<usize> = problems.iter().map(|(i, _)| *i).collect();
        info.lengths
            .pieces()
            .map(|p| !info.files_of_piece(p).iter().any(|f| bad_files.contains(f)))
            .collect()
    };
    let bad_pieces: Vec<u32> = piece_ok
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .map(|(i, _)| i as u32)
        .collect();
    let mut file_bad = vec![0u32; files.len()];
    for &p in bad_pieces.iter().filter(|_| hashed) {
        if let Some(pi) = info.lengths.piece(p) {
            for f in info.files_of_piece(pi) {
                file_bad[f] += 1;
            }
        }
    }
    Ok(Findings {
        problems,
        bad_pieces,
        file_bad,
        hashed,
    })
}

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

/// The findings as the user sees them: paths under the payload's root.
struct Shown<'a> {
    m: &'a Metainfo,
    root: &'a Path,
    files: &'a [FileSpec],
}

impl Shown<'_> {
    fn path(&self, i: usize) -> String {
        self.root.join(&self.files[i].path).display().to_string()
    }

    fn piece_files(&self, p: u32) -> Vec<usize> {
        let info = &self.m.info;
        info.lengths
            .piece(p)
            .map(|pi| info.files_of_piece(pi))
            .unwrap_or_default()
    }

    fn json<'f>(&self, f: &'f Findings) -> VerifyJson<'f> {
        let bad_pieces = f
            .bad_pieces
            .iter()
            .map(|&p| BadPiece {
                piece: p,
                files: self
                    .piece_files(p)
                    .into_iter()
                    .map(|i| self.path(i))
                    .collect(),
            })
            .collect();
        let bad_files = f
            .file_bad
            .iter()
            .enumerate()
            .filter(|&(i, n)| *n > 0 || f.problem(i).is_some())
            .map(|(i, n)| BadFile {
                path: self.path(i),
                bad_pieces: *n,
                problem: f.problem(i).unwrap_or("hash mismatch"),
            })
            .collect();
        VerifyJson {
            ok: f.all_ok(),
            info_hash: self.m.info_hash_hex(),
            pieces: self.m.info.lengths.piece_count(),
            hashed: f.hashed,
            bad_pieces,
            bad_files,
        }
    }

    fn text(&self, f: &Findings) -> String {
        // Paths come from the torrent: escaped for the terminal (JSON escapes its own).
        let shown = |i: usize| printable(&self.path(i));
        let pieces = self.m.info.lengths.piece_count();
        let mut s = String::new();
        for (i, p) in &f.problems {
            s += &format!("file {}: {p}\n", shown(*i));
        }
        for &p in &f.bad_pieces {
            let names: Vec<String> = self.piece_files(p).into_iter().map(shown).collect();
            s += &format!("bad piece {p}: {}\n", names.join(", "));
        }
        for (i, n) in f.file_bad.iter().enumerate() {
            if *n > 0 && f.problem(i).is_none() {
                s += &format!("bad file {}: {n} bad pieces\n", shown(i));
            }
        }
        if f.all_ok() {
            s += &format!(
                "ok: all {pieces} pieces match ({} files)\n",
                self.files.len()
            );
        } else if f.hashed {
            s += &format!("FAILED: {} of {pieces} pieces bad\n", f.bad_pieces.len());
        } else {
            s += &format!(
                "FAILED: {} files missing or wrong size; {} pieces affected, the rest not hashed\n",
                f.problems.len(),
                f.bad_pieces.len()
            );
        }
        s
    }
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
