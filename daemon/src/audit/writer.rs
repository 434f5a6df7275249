//! The audit file's writer: a thread fed by a bounded queue, appending hash-chained records,
//! syncing them as configured, rotating by size and reopening on request.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::DecisionRecord;
use super::chain::{self, Head};
use super::journal::{self, Journal};
use crate::config::{AuditConfig, FsyncPolicy, OnFull};

/// Why the audit file cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("audit file {path}: {cause}")]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    pub cause: String,
}

enum Msg {
    Record(
        Box<DecisionRecord>,
        Option<tokio::sync::oneshot::Sender<()>>,
    ),
    Reopen,
}

/// The handle the data path submits records to.
#[derive(Debug)]
pub struct Writer {
    config: AuditConfig,
    queue: RwLock<Option<SyncSender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    written: Arc<AtomicU64>,
    dropped: AtomicU64,
    /// When a drop was last logged, so a full queue logs once a second, not per record.
    last_drop_log: Mutex<Option<Instant>>,
}

impl Writer {
    /// Opens (or continues the chain of) the file `config` names and starts the writer thread.
    pub fn start(config: &AuditConfig) -> Result<Arc<Self>, AuditError> {
        let err = |cause: String| AuditError {
            path: config.file.clone(),
            cause,
        };
        let head = resume(&config.file).map_err(err)?;
        let file = open(&config.file).map_err(|e| err(e.to_string()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let journal = if config.journal {
            let path = Path::new(journal::SOCKET);
            let journal = Journal::connect(path).map_err(|e| AuditError {
                path: path.to_owned(),
                cause: format!("the journal (audit.journal = true): {e}"),
            })?;
            Some(journal)
        } else {
            None
        };
        let (tx, rx) = sync_channel(config.queue);
        let written = Arc::new(AtomicU64::new(0));
        let mut state = State {
            config: config.clone(),
            file: BufWriter::with_capacity(FILE_BUFFER, file),
            size,
            json: Vec::with_capacity(1024),
            line: Vec::with_capacity(1024),
            head,
            written: written.clone(),
            dirty: false,
            last_sync: Instant::now(),
            journal,
            journal_failing: false,
        };
        info!(file = %config.file.display(), seq = state.head.seq, head = %state.head.hash, "audit trail open");
        let thread = std::thread::Builder::new()
            .name("mtlsd-audit".into())
            .spawn(move || state.run(&rx))
            .map_err(|e| err(e.to_string()))?;
        Ok(Arc::new(Self {
            config: config.clone(),
            queue: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            written,
            dropped: AtomicU64::new(0),
            last_drop_log: Mutex::new(None),
        }))
    }

    /// Whether this writer was started with `config` (a reload with the same settings keeps it).
    pub fn serves(&self, config: &AuditConfig) -> bool {
        self.config == *config
    }

    /// Whether each record is on disk before the connection it records goes on.
    pub fn syncs_every_record(&self) -> bool {
        self.config.fsync == FsyncPolicy::EveryRecord
    }

    /// Queues `decision`; when the queue is full, waits (`on_full = "block"`) or drops it and counts.
    pub fn submit(&self, decision: DecisionRecord) {
        self.send(Msg::Record(Box::new(decision), None));
    }

    /// Queues `decision`; the receiver completes once it is written and synced (none if
    /// the writer is closed or dropped it).
    pub fn submit_synced(&self, decision: DecisionRecord) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Record(Box::new(decision), Some(tx)))
            .then_some(rx)
    }

    /// Asks the writer to reopen the file (after an external logrotate moved it).
    pub fn reopen(&self) {
        self.send(Msg::Reopen);
    }

    fn send(&self, msg: Msg) -> bool {
        // Sent under the read lock, not through a clone: no per-record reference counting,
        // and `close` (the write lock) waits for a blocked sender the writer is draining.
        let queue = self.queue.read().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queue.as_ref() else {
            return false;
        };
        match self.config.on_full {
            OnFull::Block => match queue.try_send(msg) {
                Ok(()) => true,
                // Full: this connection waits until the writer catches up (back-pressure, by
                // choice). On the daemon's multi-thread runtime the worker first hands its
                // other connections to another thread, so only this one waits.
                Err(TrySendError::Full(msg)) => {
                    let wait = || queue.send(msg).is_ok();
                    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                            tokio::task::block_in_place(wait)
                        }
                        _ => wait(),
                    }
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
            OnFull::Drop => match queue.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    self.log_drop(dropped);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
        }
    }

    fn log_drop(&self, dropped: u64) {
        let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            warn!(
                file = %self.config.file.display(),
                dropped_total = dropped,
                "audit queue full: records dropped (on_full = \"drop\")"
            );
        }
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes everything queued, syncs and stops the thread.
    pub fn close(&self) {
        drop(self.queue.write().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens the audit file for appending; created owner- and group-readable only.
fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Where the chain of an existing file stands, so a restart continues it.
fn resume(path: &Path) -> Result<Head, String> {
    let Ok(file) = File::open(path) else {
        return Ok(Head::default());
    };
    let mut last = None;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    match last {
        None => Ok(Head::default()),
        Some(line) => chain::head_of(&line).map_err(|e| {
            format!("its last record is damaged ({e}); move the file aside (and verify it) to start a new chain")
        }),
    }
}

struct State {
    config: AuditConfig,
    /// Records are gathered here and written once per batch: one write per batch, not per record.
    file: BufWriter<File>,
    size: u64,
    /// The record's JSON and its sealed line, reused: no allocation per record.
    json: Vec<u8>,
    line: Vec<u8>,
    head: Head,
    written: Arc<AtomicU64>,
    /// Written but not yet synced.
    dirty: bool,
    last_sync: Instant,
    /// Where records also go with `journal = true`.
    journal: Option<Journal>,
    /// The journal refused the last entry: logged once until it takes one again.
    journal_failing: bool,
}

/// The file's write buffer: a 5 ms batch at tens of thousands of records a second is one
/// write, not one per 8 KiB (`BufWriter`'s default).
const FILE_BUFFER: usize = 256 * 1024;

/// How long the writer lets records gather after the first of a batch arrives (unless each
/// must be synced before its connection goes on), and how often it collects them while
/// records keep coming: it wakes once per batch, not per record.
const BATCH_WAIT: Duration = Duration::from_millis(5);

impl State {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let every_record = self.config.fsync == FsyncPolicy::EveryRecord;
        let mut acks = Vec::new();
        loop {
            // Asleep until there is work (or, with fsync = "interval", until a sync is due).
            let first = match rx.recv_timeout(self.config.fsync_interval) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.flush(every_record, &mut acks);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.handle(first, &mut acks);
            if every_record {
                // Group commit: one write and one sync for everything queued meanwhile, then
                // every connection waiting on a record of it goes on.
                let closed = self.drain(rx, &mut acks);
                self.flush(true, &mut acks);
                if closed {
                    break;
                }
                continue;
            }
            // Busy: collect every BATCH_WAIT without being woken, until a pass finds nothing.
            // A sender wakes the writer only when it sleeps in `recv` (one futex call on
            // the data path per idle-to-busy change, not one per batch).
            let mut closed = false;
            while !closed {
                std::thread::sleep(BATCH_WAIT);
                let before = self.head.seq;
                closed = self.drain(rx, &mut acks);
                self.flush(false, &mut acks);
                if self.head.seq == before {
                    break;
                }
            }
            if closed {
                break;
            }
        }
        self.flush(true, &mut acks);
        info!(file = %self.config.file.display(), seq = self.head.seq, head = %self.head.hash, "audit trail closed");
    }

    /// Handles everything queued now; whether the queue is closed.
    fn drain(
        &mut self,
        rx: &Receiver<Msg>,
        acks: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    ) -> bool {
        loop {
            match rx.try_recv() {
                Ok(msg) => self.handle(msg, acks),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn handle(&mut self, msg: Msg, acks: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
        match msg {
            Msg::Record(decision, ack) => {
                self.write(&decision);
                acks.extend(ack);
            }
            Msg::Reopen => self.reopen("reopened on request"),
        }
    }

    /// Writes what is buffered, syncs if `now` (or if the interval is due), then releases `acks`.
    fn flush(&mut self, now: bool, acks: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
        if let Err(e) = self.file.flush() {
            error!(file = %self.config.file.display(), error = %e, "audit records not written");
        }
        let due = self.config.fsync == FsyncPolicy::Interval
            && self.last_sync.elapsed() >= self.config.fsync_interval;
        if now || due {
            self.sync();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }

    fn write(&mut self, decision: &DecisionRecord) {
        self.json.clear();
        if serde_json::to_writer(&mut self.json, decision).is_err() {
            self.json.clear();
            self.json.extend_from_slice(b"{}");
        }
        self.line.clear();
        chain::seal_into(&self.json, &mut self.head, &mut self.line);
        if let Err(e) = self.file.write_all(&self.line) {
            error!(file = %self.config.file.display(), error = %e, "audit record not written");
            return;
        }
        self.written.fetch_add(1, Ordering::Relaxed);
        self.size += self.line.len() as u64;
        self.send_to_journal(decision);
        self.dirty = true;
        if self.config.rotate_bytes > 0 && self.size >= self.config.rotate_bytes {
            self.rotate();
        }
    }

    /// The record just sealed, to the journal too; the file stays the complete trail, so a
    /// journal that refuses entries (journald restarting, its queue full) is logged, not fatal.
    fn send_to_journal(&mut self, decision: &DecisionRecord) {
        let Some(journal) = &self.journal else { return };
        match journal.send(decision, &self.head) {
            Ok(()) if self.journal_failing => {
                self.journal_failing = false;
                info!(socket = %journal.path().display(), seq = self.head.seq, "audit records reach the journal again");
            }
            Ok(()) => {}
            Err(e) if !self.journal_failing => {
                self.journal_failing = true;
                error!(socket = %journal.path().display(), seq = self.head.seq, error = %e, "audit record not sent to the journal; the file keeps it");
            }
            Err(_) => {}
        }
    }

    fn sync(&mut self) {
        self.last_sync = Instant::now();
        if self.dirty {
            let synced = self
                .file
                .flush()
                .and_then(|()| self.file.get_ref().sync_data());
            if let Err(e) = synced {
                error!(file = %self.config.file.display(), error = %e, "audit file sync failed");
            }
            self.dirty = false;
        }
    }

    /// `file` → `file.1` → … → `file.<keep>`, the oldest removed; the chain continues in the new file.
    fn rotate(&mut self) {
        self.sync();
        let path = &self.config.file;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        let keep = self.config.keep.max(1);
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if let Err(e) = std::fs::rename(path, numbered(1)) {
            error!(file = %path.display(), error = %e, "audit rotation failed; writing on");
            return;
        }
        self.reopen("rotated");
    }

    fn reopen(&mut self, why: &'static str) {
        self.sync();
        match open(&self.config.file) {
            Ok(file) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = BufWriter::with_capacity(FILE_BUFFER, file);
                // The head goes to the normal log too: an outside witness of where the chain stood.
                info!(
                    file = %self.config.file.display(),
                    seq = self.head.seq,
                    head = %self.head.hash,
                    why,
                    "audit file rotated"
                );
            }
            Err(e) => {
                error!(file = %self.config.file.display(), error = %e, "audit file cannot be reopened; writing on to the old one");
            }
        }
    }
}
