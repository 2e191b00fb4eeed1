//! `corvid info TORRENT`: what a torrent describes, for humans or as one JSON object.

use std::path::{Path, PathBuf};

use anyhow::Context;
use corvid_engine::metainfo::Metainfo;

use corvid_engine::stats::to_json_line;

use crate::output::{human_size, print, printable};
use crate::{Exit, Failure};

#[derive(clap::Args, Debug)]
#[command(
    about = "Show a torrent's name, info-hash, size, pieces, files and trackers",
    after_help = "Examples:\n  corvid info release-42.torrent\n  corvid info release-42.torrent --json | jq .info_hash"
)]
pub struct Args {
    /// The .torrent file to read.
    torrent: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Reads and parses a torrent file; every failure is an input error naming the file.
pub fn load(path: &Path) -> Result<Metainfo, Failure> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::input)?;
    Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a usable torrent", path.display()))
        .map_err(Failure::input)
}

/// `corvid info --json`, fields in the order printed.
#[derive(serde::Serialize)]
struct InfoJson<'a> {
    name: &'a str,
    info_hash: String,
    total_size: u64,
    piece_length: u64,
    pieces: u32,
    multi_file: bool,
    private: bool,
    files: Vec<FileJson>,
    trackers: Vec<String>,
    comment: Option<&'a str>,
    created_by: Option<&'a str>,
    creation_date: Option<i64>,
}

#[derive(serde::Serialize)]
struct FileJson {
    path: String,
    size: u64,
}

pub fn run(args: Args) -> Result<Exit, Failure> {
    let m = load(&args.torrent)?;
    let i = &m.info;
    if args.json {
        let obj = InfoJson {
            name: &i.name,
            info_hash: m.info_hash_hex(),
            total_size: i.lengths.total_length(),
            piece_length: i.lengths.piece_length(),
            pieces: i.lengths.piece_count(),
            multi_file: i.multi_file,
            private: i.private,
            files: i
                .files
                .iter()
                .map(|f| FileJson {
                    path: f.path.to_string_lossy().into_owned(),
                    size: f.length,
                })
                .collect(),
            trackers: m.trackers(),
            comment: m.comment.as_deref(),
            created_by: m.created_by.as_deref(),
            creation_date: m.creation_date,
        };
        print(&format!("{}\n", to_json_line(&obj)))?;
        return Ok(Exit::Ok);
    }
    let mut s = String::new();
    // Everything from the torrent goes through `printable`: a hostile torrent's escape
    // sequences must not reach the terminal.
    s += &format!("name:         {}\n", printable(&i.name));
    s += &format!("info-hash:    {}\n", m.info_hash_hex());
    s += &format!(
        "total size:   {} ({} bytes)\n",
        human_size(i.lengths.total_length()),
        i.lengths.total_length()
    );
    s += &format!(
        "pieces:       {} x {}\n",
        i.lengths.piece_count(),
        human_size(i.lengths.piece_length())
    );
    if i.private {
        s += "private:      yes\n";
    }
    if let Some(c) = &m.comment {
        s += &format!("comment:      {}\n", printable(c));
    }
    if let Some(c) = &m.created_by {
        s += &format!("created by:   {}\n", printable(c));
    }
    let trackers = m.trackers();
    if trackers.is_empty() {
        s += "trackers:     (none)\n";
    }
    for t in trackers {
        s += &format!("tracker:      {}\n", printable(&t));
    }
    s += &format!("files:        {}\n", i.files.len());
    for f in &i.files {
        s += &format!(
            "  {:>12}  {}\n",
            f.length,
            printable(&f.path.display().to_string())
        );
    }
    print(&s)?;
    Ok(Exit::Ok)
}
