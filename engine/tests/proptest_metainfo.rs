//! Property tests for torrent files and piece geometry: a torrent assembled from any safe
//! file list parses back to exactly that list, and the blocks of every piece tile it
//! with no gap or overlap, whatever the total length and piece length.

use std::path::PathBuf;

use corvid_engine::geometry::{Lengths, BLOCK_SIZE, MAX_PIECE_LENGTH};
use corvid_engine::metainfo::{self, BuildOptions, FileSpec, Metainfo, Payload};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use sha1::{Digest, Sha1};

/// A path component `check_component` accepts: not empty, not `.` or `..`, no `/`, `\`
/// or NUL (the first character is never a dot, which rules out `.` and `..`).
fn component() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_\u{e9}\u{4e2d}][a-zA-Z0-9_. -]{0,7}"
}

/// Relative paths (1 to 3 components) with lengths; no path is a directory of another,
/// which a real tree cannot have either.
fn file_list() -> impl Strategy<Value = Vec<(Vec<String>, u64)>> {
    btree_map(vec(component(), 1..4), 0u64..300_000, 1..12).prop_map(|m| {
        let paths: Vec<(Vec<String>, u64)> = m.into_iter().collect();
        paths
            .iter()
            .filter(|(p, _)| {
                !paths
                    .iter()
                    .any(|(q, _)| q.len() > p.len() && q.starts_with(p))
            })
            .cloned()
            .collect()
    })
}

fn options() -> impl Strategy<Value = BuildOptions> {
    (
        proptest::option::of(0u32..4),
        vec("http://[a-z0-9.]{1,12}:[0-9]{2,5}/announce", 0..3),
        proptest::option::of("[ -~]{0,30}"),
        proptest::option::of(any::<i64>()),
        any::<bool>(),
    )
        .prop_map(
            |(shift, trackers, comment, creation_date, private)| BuildOptions {
                trackers,
                piece_length: shift.map(|s| u64::from(BLOCK_SIZE) << s),
                name: None,
                comment,
                creation_date,
                private,
                align: false,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn assembled_torrent_parses_back(
        name in component(),
        files in file_list(),
        single_len in 1u64..2_000_000,
        multi in any::<bool>(),
        opts in options(),
        hash_seed in any::<u8>(),
    ) {
        let disk_files: Vec<FileSpec> = if multi {
            files
                .iter()
                .map(|(p, l)| FileSpec {
                    path: std::iter::once(&name).chain(p).collect::<PathBuf>(),
                    length: *l, pad: false,
                })
                .collect()
        } else {
            vec![FileSpec { path: PathBuf::from(&name), length: single_len, pad: false }]
        };
        // Every other file executable, so BEP 47 `x` attributes round-trip too.
        let executable = (0..disk_files.len()).map(|i| i % 2 == 1).collect();
        let payload = Payload {
            root: PathBuf::from("/nonexistent"),
            disk_files,
            name: name.clone(),
            multi_file: multi,
            executable,
            symlinks: Vec::new(),
        };
        // An empty payload has no pieces, which BEP 3 cannot express; corvid refuses it.
        prop_assume!(payload.total_length() > 0);
        let lengths = metainfo::payload_lengths(&payload, &opts).expect("valid geometry");
        let hashes: Vec<[u8; 20]> = (0..lengths.piece_count())
            .map(|i| [hash_seed.wrapping_add(i as u8); 20])
            .collect();
        let (meta, bytes) =
            metainfo::assemble(&payload, &opts, lengths, &hashes).expect("assembles");
        let parsed = Metainfo::from_bytes(&bytes).expect("parses");
        prop_assert_eq!(&parsed, &meta);
        prop_assert_eq!(&parsed.info.files, &payload.torrent_files());
        prop_assert_eq!(&parsed.info.name, &name);
        prop_assert_eq!(parsed.info.multi_file, multi);
        prop_assert_eq!(&parsed.info.pieces, &hashes);
        prop_assert_eq!(parsed.info.lengths, lengths);
        prop_assert_eq!(parsed.info.private, opts.private);
        prop_assert_eq!(&parsed.comment, &opts.comment);
        prop_assert_eq!(parsed.creation_date, opts.creation_date);
        prop_assert_eq!(parsed.announce.as_ref(), opts.trackers.first());
        prop_assert_eq!(parsed.trackers(), opts.trackers.clone());
        prop_assert_eq!(parsed.info_hash, <[u8; 20]>::from(Sha1::digest(&parsed.info_bytes)));
        // Canonical: the parsed torrent's info dictionary is byte-identical in the file.
        prop_assert!(bytes.windows(parsed.info_bytes.len()).any(|w| w == parsed.info_bytes));
    }
}

/// A piece length (multiple of 16 KiB, at most the maximum) and a total of 1 to 300
/// pieces' worth, so every piece can be walked.
fn geometry() -> impl Strategy<Value = Lengths> {
    (1u64..=MAX_PIECE_LENGTH / u64::from(BLOCK_SIZE)).prop_flat_map(|blocks| {
        let piece_length = blocks * u64::from(BLOCK_SIZE);
        (1u64..=piece_length * 300).prop_map(move |total| {
            Lengths::new(total, piece_length, total.div_ceil(piece_length)).expect("valid")
        })
    })
}

proptest! {
    #[test]
    fn blocks_tile_every_piece(lengths in geometry()) {
        let mut covered: u64 = 0;
        for piece in lengths.pieces() {
            prop_assert_eq!(lengths.piece_offset(piece), covered, "piece {} starts in a gap", piece.get());
            let size = lengths.piece_size(piece);
            prop_assert!(size > 0 && u64::from(size) <= lengths.piece_length());
            let mut end = 0u32;
            let n = lengths.blocks_in_piece(piece);
            for b in 0..n {
                let block = lengths.block(piece, b).expect("block inside the piece");
                prop_assert_eq!(block.piece, piece);
                prop_assert_eq!(block.offset, end, "block {} of piece {}", b, piece.get());
                prop_assert!(block.len > 0 && block.len <= BLOCK_SIZE);
                // Only the last block of a piece may be short.
                prop_assert!(block.len == BLOCK_SIZE || b + 1 == n);
                // What a peer may ask for, the checker accepts as the same block.
                prop_assert_eq!(
                    lengths.checked_block(piece.get(), block.offset, block.len, BLOCK_SIZE),
                    Some(block)
                );
                end += block.len;
            }
            prop_assert_eq!(end, size, "blocks of piece {} do not cover it", piece.get());
            prop_assert_eq!(lengths.block(piece, n), None);
            prop_assert_eq!(lengths.checked_block(piece.get(), size, 1, BLOCK_SIZE), None);
            covered += u64::from(size);
        }
        prop_assert_eq!(covered, lengths.total_length());
        prop_assert_eq!(lengths.piece(lengths.piece_count()), None);
        prop_assert_eq!(lengths.bitfield_len(), (lengths.piece_count() as usize).div_ceil(8));
    }
}
