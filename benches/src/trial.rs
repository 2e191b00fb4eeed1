//! What the `link` and `fleet` scenarios share about measuring a method: a scratch
//! directory that is gone when the scenario ends, the error that tells a run that could
//! not finish from one that finished with wrong bytes, and the loop that runs a method
//! `--runs` times from a warm page cache and stops at its first failure.

use crate::payload::{self, Payload};
use crate::report::{MethodResult, Outcome, Run};
use crate::Common;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Why a run did not produce a time.
pub enum RunError {
    Failed(anyhow::Error),
    DataLoss(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> RunError {
        RunError::Failed(e)
    }
}

/// `--dir/work-PID`, created empty and removed on drop (also when the scenario fails).
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn create(c: &Common) -> Result<WorkDir> {
        let work = c
            .dir
            .canonicalize()
            .context("resolving --dir")?
            .join(format!("work-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(WorkDir(work))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How one method's runs are labelled in the terminal and in results.json.
pub struct Repeat<'a> {
    pub method: &'a str,
    pub runs: u64,
    pub payload: &'a Payload,
    /// Put before a failure's error where results.json records it (`N=4: ` in a fleet).
    pub error_prefix: String,
    /// Put after `DATA LOSS` on the terminal (` (scp)`), or empty.
    pub loss_label: String,
}

/// Runs `one(r)` for r in 1..=runs, each from a freshly warmed page cache. `one`'s outer
/// error aborts the scenario (set-up broke); its inner one fails the method, which stops
/// at its first failed run. `ok` prints a run that produced a time.
pub fn repeat(
    r: &Repeat,
    mut one: impl FnMut(u64) -> Result<Result<Run, RunError>>,
    mut ok: impl FnMut(u64, &Run),
) -> Result<MethodResult> {
    let mut runs = Vec::new();
    let mut failure = None;
    for i in 1..=r.runs {
        let warm = payload::warm(r.payload)?;
        println!(
            "  warm: synced dirty pages, read the payload once into page cache ({:.2}s)",
            warm.as_secs_f64()
        );
        match one(i)? {
            Ok(mut run) => {
                run.warm_s = warm.as_secs_f64();
                ok(i, &run);
                runs.push(run);
            }
            Err(RunError::Failed(e)) => {
                println!("  run {i}/{}: FAILED: {e:#}", r.runs);
                failure = Some((format!("{}{e:#}", r.error_prefix), false));
                break;
            }
            Err(RunError::DataLoss(e)) => {
                eprintln!("  run {i}/{}: DATA LOSS{}: {e:#}", r.runs, r.loss_label);
                failure = Some((format!("{}{e:#}", r.error_prefix), true));
                break;
            }
        }
    }
    Ok(MethodResult {
        method: r.method.to_string(),
        outcome: match failure {
            Some((error, data_loss)) => Outcome::Failed { error, data_loss },
            None => Outcome::Ok(runs),
        },
    })
}
