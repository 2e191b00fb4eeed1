//! The resume record's thread and the writer that reports only its first failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::storage::Storage;
use crate::wire::Bitfield;

use super::report::NodeEvent;
use super::resume::RecordWriter;
#[cfg(doc)]
use super::resume::ResumeConfig;
use super::shared::Shared;

/// A [`RecordWriter`] that reports only its first failure: a disk that is full stays full
/// for a while, and one warning says it.
pub(super) struct RecordKeeper {
    writer: RecordWriter,
    warned: bool,
    /// The record was removed on completion (release layout): nothing more is written.
    retired: bool,
    /// How long the last write took, to space writes out on slow disks.
    last_took: Duration,
}

impl RecordKeeper {
    pub(super) fn new(writer: RecordWriter) -> RecordKeeper {
        RecordKeeper {
            writer,
            warned: false,
            retired: false,
            last_took: Duration::ZERO,
        }
    }

    /// Writes the record (see [`RecordWriter::write`] for `restamp`); returns the warning
    /// to report, the first time one fails.
    pub(super) fn write(
        &mut self,
        storage: &Storage,
        have: &Bitfield,
        restamp: bool,
    ) -> Option<String> {
        if self.retired {
            return None;
        }
        let t = Instant::now();
        let r = self.writer.write(storage, have, restamp);
        self.last_took = t.elapsed();
        match r {
            Ok(_) => None,
            Err(e) if !self.warned => {
                self.warned = true;
                Some(format!("{e}; downloading on without a resume record"))
            }
            Err(_) => None,
        }
    }

    pub(super) fn retire(&mut self) -> Option<String> {
        if self.retired {
            return None;
        }
        self.retired = true;
        match self.writer.remove() {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

enum RecordMsg {
    /// Write now, with the files' current times (the download completed, and the caller
    /// may have changed the files' modes on that event).
    Now,
}

/// The thread that keeps the resume record current while downloading: at most about
/// once per [`ResumeConfig::interval`] (longer if writes are slow, so they never take
/// more than a few percent of a thread), and only when pieces were verified. It is not a
/// core thread: syncing files and writing the record block.
pub(super) struct RecordThread {
    thread: std::thread::JoinHandle<RecordKeeper>,
    tx: Sender<RecordMsg>,
}

impl RecordThread {
    pub(super) fn start(
        shared: Arc<Shared>,
        mut keeper: RecordKeeper,
        keep_when_complete: bool,
        interval: Duration,
    ) -> RecordThread {
        let (tx, rx) = crossbeam_channel::unbounded::<RecordMsg>();
        let thread = std::thread::Builder::new()
            .name("corvid-record".into())
            .spawn(move || {
                loop {
                    let wait = interval.max(keeper.last_took * 20);
                    let restamp = match rx.recv_timeout(wait) {
                        Ok(RecordMsg::Now) => true,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    };
                    let snap = shared.door.snapshot();
                    let (have, complete) = (&snap.have, snap.complete);
                    let warning = if complete && !keep_when_complete {
                        let w = keeper.retire();
                        if let Some(message) = w {
                            shared.push_event(NodeEvent::Warning { message });
                        }
                        break;
                    } else {
                        keeper.write(&shared.storage, have, restamp)
                    };
                    if let Some(message) = warning {
                        shared.push_event(NodeEvent::Warning { message });
                    }
                }
                keeper
            })
            .expect("spawn record thread");
        RecordThread { thread, tx }
    }

    /// Asks for a write now (completion).
    pub(super) fn wake(&self) {
        let _ = self.tx.send(RecordMsg::Now);
    }

    /// Stops the thread and hands back the writer for the final record.
    pub(super) fn stop(self) -> RecordKeeper {
        drop(self.tx);
        match self.thread.join() {
            Ok(k) => k,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}
