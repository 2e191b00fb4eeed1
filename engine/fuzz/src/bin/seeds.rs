//! Writes the seed corpora: `seeds DIR` creates `DIR/<target>/<name>` for every seed input
//! of [`corvid_fuzz::seeds`]. Built without coverage instrumentation (see the README).
//! `seeds --replay TARGET FILE...` runs inputs through a harness without libFuzzer, to
//! debug a crash under a plain build.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, target, files @ ..] if flag == "--replay" => {
            for f in files {
                let data = match std::fs::read(f) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("seeds: cannot read {f}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                if !corvid_fuzz::run(target, &data) {
                    eprintln!(
                        "seeds: no target {target}; targets: {:?}",
                        corvid_fuzz::TARGETS
                    );
                    return ExitCode::FAILURE;
                }
                println!("{f}: ok");
            }
            ExitCode::SUCCESS
        }
        [dir] => {
            let dir = PathBuf::from(dir);
            for (target, name, bytes) in corvid_fuzz::seeds() {
                let d = dir.join(target);
                let path = d.join(&name);
                if let Err(e) =
                    std::fs::create_dir_all(&d).and_then(|()| std::fs::write(&path, &bytes))
                {
                    eprintln!("seeds: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: seeds DIR | seeds --replay TARGET FILE...");
            ExitCode::from(2)
        }
    }
}
