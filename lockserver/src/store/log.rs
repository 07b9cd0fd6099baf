//! The embedded store's log files: record framing, recovery to a clean prefix, and
//! the group-commit writer thread.
//!
//! Owns: bytes on disk. Never interprets records beyond their frame (the caller
//! decodes payloads) and never acknowledges an append before its `fdatasync`.
//! Invariant: a log file is always a clean prefix of frames once recovery has run,
//! and every acknowledged append is in it.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload[len]`.
//!
//! Each batch the writer appends (one write, one `fdatasync`) ends with a batch-end
//! frame that gives the offset where the batch began (its payload: a 0 byte, which no
//! record begins with, then that offset as u64 LE). Recovery cuts a log back to the
//! frames before its first damaged one, since a crash during an append leaves that
//! batch torn anywhere (its sectors reach the disk in any order). Such damage can only
//! be in the last batch, as the next batch is written only once this one is on disk.
//! So a valid batch-end frame past the damage, of a batch that began past it, proves
//! the damage is no torn append, and that cutting there would drop acknowledged
//! records: recovery refuses instead (`Error::DamagedLog`). A generation's snapshot is
//! written whole before the file is renamed into place, and ends with a snapshot-end
//! frame (a 1 byte, then the snapshot's length): any damage before it is no torn
//! append either.
//!
//! A log file is zero-filled ahead of its frames (`PREALLOCATE` at a time), and
//! appends overwrite that space. An `fdatasync` of blocks that already exist in the
//! file flushes only data; one that grows the file must also commit the new size
//! through the filesystem's journal. On this project's machines that made each
//! append's fsync about 2.5 times slower (`dd oflag=dsync`: 0.56 ms appending, 0.21 ms
//! overwriting). A zero header (length 0) therefore ends the log: no record is empty.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Largest payload accepted in a frame. A larger declared length ends recovery
/// (it can only come from corruption), and an append that large is refused.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
const HEADER: usize = 8;
/// First payload byte of a batch-end frame (records are JSON objects).
const BATCH_END: u8 = 0;
/// First payload byte of a snapshot-end frame.
const SNAPSHOT_END: u8 = 1;
/// Both end frames: that byte, then an offset or a length (u64 LE).
const END_FRAME_LEN: usize = 9;
/// Zero-filled space a log file keeps ahead of its frames.
const PREALLOCATE: u64 = 4 << 20;
/// A batch with at least this many appends means the server is loaded: the
/// writer then waits [`GATHER`] before taking the next batch.
const GATHER_MIN_BATCH: usize = 64;
/// How long a loaded writer lets the next batch gather.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);
/// Longest time a lazy append (one nobody waits for) stays queued: it is written with
/// the next append somebody waits for, or after this long, whichever comes first.
pub const LAZY_FLUSH: std::time::Duration = std::time::Duration::from_millis(10);

/// Appends one frame around `payload` to `buf`.
pub fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Appends one frame whose payload `write` appends to `buf` in place (no separate
/// payload buffer). The result is the same bytes as [`frame`]. On error, or when the
/// payload is larger than [`MAX_RECORD_BYTES`], `buf` is left as it was.
pub fn frame_in_place<E>(
    buf: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
) -> std::result::Result<(), Option<E>> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    if let Err(e) = write(buf) {
        buf.truncate(start);
        return Err(Some(e));
    }
    let len = buf.len() - start - HEADER;
    if len > MAX_RECORD_BYTES {
        buf.truncate(start);
        return Err(None);
    }
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Appends an end frame of `kind` ([`BATCH_END`], [`SNAPSHOT_END`]) carrying `offset`.
fn end_frame(buf: &mut Vec<u8>, kind: u8, offset: u64) {
    let mut payload = [kind; END_FRAME_LEN];
    payload[1..].copy_from_slice(&offset.to_le_bytes());
    frame(buf, &payload);
}

/// A batch-end or snapshot-end frame's payload.
#[derive(Debug, PartialEq, Eq)]
enum EndFrame {
    /// The batch began at this offset.
    Batch(u64),
    /// The snapshot (from offset 0) is this long.
    Snapshot(u64),
}

/// What end frame `payload` is, if it is one (not a record).
fn end_frame_of(payload: &[u8]) -> Option<EndFrame> {
    let (&kind, offset) = payload.split_first()?;
    let offset = u64::from_le_bytes(offset.try_into().ok()?);
    match kind {
        BATCH_END => Some(EndFrame::Batch(offset)),
        SNAPSHOT_END => Some(EndFrame::Snapshot(offset)),
        _ => None,
    }
}

/// The payload of the whole, undamaged frame at `at`, if one is there.
fn frame_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let header = data.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // Length 0 is preallocated space: the end of the log.
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = data.get(at + HEADER..at + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Splits `data` into record payloads (batch-end frames left out) up to the first
/// damaged or incomplete frame; returns them with the length of the clean prefix.
pub fn parse_frames(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(payload) = frame_at(data, at) {
        if end_frame_of(payload).is_none() {
            out.push(payload);
        }
        at += HEADER + payload.len();
    }
    (out, at)
}

/// Where a valid end frame lies that proves the damage at `damaged_at` no torn append
/// (see the module comment): one of a batch that began past the damage, or of the
/// snapshot, which is never torn.
fn written_whole_after(data: &[u8], damaged_at: usize) -> Option<u64> {
    let mut at = damaged_at + 1;
    while at + HEADER <= data.len() {
        match frame_at(data, at) {
            Some(payload) => {
                match end_frame_of(payload) {
                    Some(EndFrame::Batch(begun)) if begun > damaged_at as u64 => {
                        return Some(at as u64);
                    }
                    Some(EndFrame::Snapshot(_)) => return Some(at as u64),
                    _ => {}
                }
                at += HEADER + payload.len();
            }
            None => at += 1,
        }
    }
    None
}

/// `dir/log.<generation>`.
pub fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation:020}"))
}

/// The newest complete log generation in `dir`, if any. Older generations are
/// leftovers of a compaction that crashed before deleting them.
pub fn newest_generation(dir: &Path) -> Result<Option<u64>> {
    let mut best = None;
    for e in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let e = e.map_err(Error::io("list", dir))?;
        let name = e.file_name();
        let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix("log."))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        best = best.max(Some(g));
    }
    Ok(best)
}

/// Reads a log file and cuts it back to its clean prefix; returns the payloads.
/// Refuses a log whose damage is followed by a batch written after it.
pub fn recover_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(Error::io("read", path))?;
    let (frames, clean) = parse_frames(&data);
    if let Some(proof_at) = written_whole_after(&data, clean) {
        return Err(Error::DamagedLog {
            path: path.to_path_buf(),
            damaged_at: clean as u64,
            proof_at,
        });
    }
    let out = frames.into_iter().map(<[u8]>::to_vec).collect();
    if clean < data.len() {
        if data[clean..].iter().any(|b| *b != 0) {
            tracing::warn!(path = %path.display(), clean, len = data.len(), "log has a damaged tail (an append a crash tore); truncating to its clean prefix");
        }
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(Error::io("open", path))?;
        f.set_len(clean as u64)
            .map_err(Error::io("truncate", path))?;
        f.sync_all().map_err(Error::io("fsync", path))?;
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}

/// Writes `frames` (a snapshot) as generation `g` atomically (tmp file, fsync,
/// rename, fsync dir), ended by its snapshot-end frame, with zero-filled space after
/// them for the appends to come.
pub fn write_generation(dir: &Path, g: u64, frames: &[u8]) -> Result<LogFile> {
    let tmp = dir.join(format!("log.tmp.{g}"));
    let path = log_path(dir, g);
    let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
    let mut end = Vec::with_capacity(HEADER + END_FRAME_LEN);
    end_frame(&mut end, SNAPSHOT_END, frames.len() as u64);
    f.write_all(frames)
        .and_then(|()| f.write_all(&end))
        .map_err(Error::io("write", &tmp))?;
    let written = (frames.len() + end.len()) as u64;
    let mut log = LogFile {
        file: f,
        end: written,
        allocated: written,
    };
    // Synced by `preallocate` (frames and zeros alike) before the rename publishes it.
    log.preallocate(PREALLOCATE)
        .map_err(Error::io("preallocate", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
    sync_dir(dir)?;
    Ok(log)
}

/// An open log generation: frames up to `end`, zeros from there to `allocated`.
pub struct LogFile {
    file: File,
    end: u64,
    allocated: u64,
}

impl LogFile {
    /// Writes `bytes` after the last frame and waits for them to reach the disk.
    fn append_durably(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let needed = self.end + bytes.len() as u64;
        if needed > self.allocated {
            self.preallocate(needed - self.end + PREALLOCATE)?;
        }
        self.file.write_all_at(bytes, self.end)?;
        self.file.sync_data()?;
        self.end = needed;
        Ok(())
    }

    /// Makes sure `ahead` bytes of zeros follow the frames, on disk with the file's
    /// new size. Cheap when they already do; otherwise it writes zeros and syncs
    /// everything (a batch that finds the space missing pays for it once).
    fn preallocate(&mut self, ahead: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let target = self.end + ahead;
        if target <= self.allocated {
            return Ok(());
        }
        let zeros = vec![0u8; 64 << 10];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// Keeps at least half of [`PREALLOCATE`] free ahead, after a batch was
    /// acknowledged: its waiters do not pay for the zeros (appends queued meanwhile do,
    /// once per half of PREALLOCATE of log).
    fn top_up(&mut self) -> std::io::Result<()> {
        if self.allocated - self.end < PREALLOCATE / 2 {
            self.preallocate(PREALLOCATE)?;
        }
        Ok(())
    }
}

type Waiter = oneshot::Sender<std::result::Result<(), Arc<std::io::Error>>>;

/// Resolves when the bytes it stands for are on disk (or the write failed).
pub type Durable = oneshot::Receiver<std::result::Result<(), Arc<std::io::Error>>>;

/// A compaction: the snapshot's frames become the next generation. Appends queued
/// before the snapshot was taken are written (and acknowledged) in the old file first.
struct Rotate {
    snapshot: Vec<u8>,
    before: Vec<u8>,
    before_waiters: Vec<Waiter>,
}

/// What the writer thread has queued.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    waiters: Vec<Waiter>,
    /// A pending compaction. Everything in `bytes` after it was queued belongs in
    /// the new generation.
    rotate: Option<Rotate>,
    /// The writer has taken a compaction and not finished it: `file_bytes` still
    /// counts the old generation, so no second compaction may be queued meanwhile.
    rotating: bool,
    closed: bool,
    /// Set after a failed write or fsync: what is on disk is unknown, refuse all.
    failed: Option<Arc<std::io::Error>>,
    /// Bytes written to the current generation (drives compaction).
    file_bytes: u64,
    /// The writer is writing or fsyncing a batch that is not acknowledged yet.
    busy: bool,
    /// The writer is waiting on the condition variable (needs a notify).
    idle: bool,
    /// Size of the current generation's snapshot: compaction waits until the log
    /// has grown well past it, so a large live state does not compact in a loop.
    snapshot_bytes: u64,
}

impl Queue {
    fn push(&mut self, framed: &[u8], tx: Waiter) -> Result<()> {
        self.push_lazy(framed)?;
        self.waiters.push(tx);
        Ok(())
    }

    fn push_lazy(&mut self, framed: &[u8]) -> Result<()> {
        if self.closed {
            return Err(Error::ShuttingDown);
        }
        if let Some(e) = &self.failed {
            return Err(Error::Io {
                op: "append (log failed earlier)",
                path: PathBuf::new(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            });
        }
        self.bytes.extend_from_slice(framed);
        Ok(())
    }

    /// Whether the writer has something to write now (not only lazy bytes).
    fn urgent(&self) -> bool {
        !self.waiters.is_empty() || self.rotate.is_some() || self.closed
    }

    fn push_rotate(&mut self, snapshot: Vec<u8>) {
        if self.rotate.is_some() {
            return; // the pending one is as good: later appends follow it in order
        }
        let before = std::mem::take(&mut self.bytes);
        let before_waiters = std::mem::take(&mut self.waiters);
        self.rotate = Some(Rotate {
            snapshot,
            before,
            before_waiters,
        });
    }
}

/// The group-commit writer: appends queue up while one `fdatasync` runs, and the
/// next write takes all of them, so one fsync covers many appends.
pub struct Writer {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread appending to `file` (generation `g` in `dir`),
    /// whose first `file_bytes` are its snapshot.
    pub fn start(dir: PathBuf, g: u64, file: LogFile, file_bytes: u64) -> Self {
        let shared = Arc::new((
            Mutex::new(Queue {
                file_bytes,
                snapshot_bytes: file_bytes,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-log".into())
            .spawn(move || writer_loop(s2, dir, g, file))
            .map_err(|e| tracing::error!(error = %e, "cannot start the log writer thread"))
            .ok();
        Writer {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Queues framed bytes; the receiver resolves once they are on disk. Call in
    /// the order the records were applied (the embedded store holds its state lock).
    pub fn append(&self, framed: &[u8]) -> Result<Durable> {
        let (tx, rx) = oneshot::channel();
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
        q.push(framed, tx)?;
        // A busy writer takes the queue when it is done; waking it costs a syscall.
        if q.idle {
            cv.notify_one();
        }
        Ok(rx)
    }

    /// Resolves once everything appended so far is on disk (at once when nothing
    /// is pending). Readers use it before answering from state that must be durable.
    pub fn barrier(&self) -> Result<Option<Durable>> {
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
        if q.bytes.is_empty() && !q.busy && q.rotate.is_none() {
            return match &q.failed {
                None => Ok(None),
                Some(e) => Err(Error::Io {
                    op: "read barrier (log failed earlier)",
                    path: PathBuf::new(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }),
            };
        }
        let (tx, rx) = oneshot::channel();
        q.push(&[], tx)?;
        cv.notify_one();
        Ok(Some(rx))
    }

    /// Queues framed bytes that nobody waits for: they reach the disk with the next
    /// [`Writer::append`] (in order, before it) or within [`LAZY_FLUSH`]. The writer
    /// is not woken for them, so they cost no fsync of their own while appends that
    /// must be durable keep coming. Same ordering rule as `append`.
    pub fn append_lazy(&self, framed: &[u8]) -> Result<()> {
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
        let first = q.bytes.is_empty();
        q.push_lazy(framed)?;
        // An idle writer with nothing queued sleeps without a deadline: start its
        // LAZY_FLUSH clock. Later lazy bytes ride on the same wake-up.
        if first && q.idle {
            cv.notify_one();
        }
        Ok(())
    }

    /// Queues a compaction to `snapshot` (frames of the state as of now).
    pub fn rotate(&self, snapshot: Vec<u8>) {
        let (m, cv) = &*self.shared;
        m.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_rotate(snapshot);
        cv.notify_one();
    }

    /// (Bytes in the current generation beyond its snapshot, the snapshot's size,
    /// whether a compaction is pending.)
    pub fn size(&self) -> (u64, u64, bool) {
        let q = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        (
            q.file_bytes.saturating_sub(q.snapshot_bytes),
            q.snapshot_bytes,
            q.rotate.is_some() || q.rotating,
        )
    }

    /// Writes what is queued, then stops the thread.
    pub fn close(&self) {
        {
            let (m, cv) = &*self.shared;
            m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(shared: Arc<(Mutex<Queue>, Condvar)>, dir: PathBuf, mut g: u64, mut file: LogFile) {
    let (m, cv) = &*shared;
    // The previous batch's buffers, cleared and handed back to the queue: a fresh
    // Vec per batch grew by doubling and was freed again, on every fsync.
    let (mut spare_bytes, mut spare_waiters) = (Vec::new(), Vec::new());
    loop {
        let (mut bytes, waiters, rotate, closed) = {
            let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
            // Lazy bytes alone wait up to LAZY_FLUSH for an append somebody waits for.
            let mut lazy_since = None;
            while !q.urgent() {
                q.idle = true;
                if q.bytes.is_empty() {
                    lazy_since = None;
                    q = cv.wait(q).unwrap_or_else(|p| p.into_inner());
                } else {
                    let since = *lazy_since.get_or_insert_with(std::time::Instant::now);
                    let left = LAZY_FLUSH.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        q.idle = false;
                        break;
                    }
                    q = cv
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                q.idle = false;
            }
            q.busy = true;
            (
                std::mem::replace(&mut q.bytes, std::mem::take(&mut spare_bytes)),
                std::mem::replace(&mut q.waiters, std::mem::take(&mut spare_waiters)),
                {
                    q.rotating = q.rotate.is_some();
                    q.rotate.take()
                },
                q.closed,
            )
        };
        // Order on disk: appends from before the snapshot, the snapshot, then the rest.
        if let Some(mut r) = rotate {
            let _ = write_batch(m, &mut file, &mut r.before, r.before_waiters);
            match write_generation(&dir, g + 1, &r.snapshot) {
                Ok(f) => {
                    let old = log_path(&dir, g);
                    g += 1;
                    file = f;
                    let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
                    q.file_bytes = r.snapshot.len() as u64;
                    q.snapshot_bytes = r.snapshot.len() as u64;
                    drop(q);
                    if let Err(e) = fs::remove_file(&old) {
                        tracing::warn!(error = %e, path = %old.display(), "cannot remove the compacted log");
                    }
                    tracing::info!(generation = g, bytes = r.snapshot.len(), "log compacted");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "log compaction failed; keeping the current log")
                }
            }
            m.lock().unwrap_or_else(|p| p.into_inner()).rotating = false;
        }
        let batch = waiters.len();
        spare_waiters = write_batch(m, &mut file, &mut bytes, waiters);
        if let Err(e) = file.top_up() {
            // Not fatal: the next append tries again, and fails itself if it must.
            tracing::warn!(error = %e, "cannot preallocate log space");
        }
        bytes.clear();
        spare_bytes = bytes;
        m.lock().unwrap_or_else(|p| p.into_inner()).busy = false;
        if batch >= GATHER_MIN_BATCH && !closed {
            // Under load, let the next batch gather a little longer: fewer fsyncs
            // for the same appends (each costs ~100 us of CPU), at a small latency
            // cost that only loaded servers pay. Nothing is acknowledged earlier.
            std::thread::sleep(GATHER);
        }
        if closed {
            let q = m.lock().unwrap_or_else(|p| p.into_inner());
            if q.bytes.is_empty() && q.rotate.is_none() {
                return;
            }
        }
    }
}

/// Writes and fsyncs one batch (`bytes`, to which its batch-end frame is added), then
/// tells its waiters. After a failure the log refuses every later append: what
/// reached the disk is unknown. Returns `waiters` emptied, for reuse.
fn write_batch(
    m: &Mutex<Queue>,
    file: &mut LogFile,
    bytes: &mut Vec<u8>,
    mut waiters: Vec<Waiter>,
) -> Vec<Waiter> {
    if bytes.is_empty() && waiters.is_empty() {
        return waiters;
    }
    if !bytes.is_empty() {
        end_frame(bytes, BATCH_END, file.end);
    }
    let failed = m.lock().unwrap_or_else(|p| p.into_inner()).failed.clone();
    let res = match failed {
        Some(e) => Err(e),
        // Barriers only: everything before them was fsynced by an earlier batch.
        None if bytes.is_empty() => Ok(()),
        None => file.append_durably(bytes).map_err(Arc::new),
    };
    let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
    q.file_bytes += bytes.len() as u64;
    if let Err(e) = &res {
        if q.failed.is_none() {
            tracing::error!(error = %e, "log write failed; the embedded store refuses further writes");
        }
        q.failed = Some(e.clone());
    }
    drop(q);
    for w in waiters.drain(..) {
        let _ = w.send(res.clone());
    }
    waiters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<Vec<u8>>, Vec<usize>) {
        let payloads: Vec<Vec<u8>> = (0..6)
            .map(|i| format!("{{\"record\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 3)).into_bytes())
            .collect();
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for p in &payloads {
            frame(&mut buf, p);
            ends.push(buf.len());
        }
        (buf, payloads, ends)
    }

    #[test]
    fn frame_in_place_matches_frame() {
        let (framed, payloads, _) = sample();
        let mut buf = Vec::new();
        for p in &payloads {
            frame_in_place(&mut buf, |b| {
                b.extend_from_slice(p);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        assert_eq!(buf, framed);
        let before = buf.clone();
        assert_eq!(
            frame_in_place(&mut buf, |b| {
                b.push(1);
                Err(())
            }),
            Err(Some(()))
        );
        assert_eq!(buf, before, "a failed write leaves the buffer as it was");
    }

    #[test]
    fn truncation_at_every_byte_yields_a_clean_prefix() {
        let (buf, payloads, ends) = sample();
        for cut in 0..=buf.len() {
            let (got, clean) = parse_frames(&buf[..cut]);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(got.len(), whole, "cut at {cut}");
            assert_eq!(
                got,
                payloads[..whole]
                    .iter()
                    .map(Vec::as_slice)
                    .collect::<Vec<_>>()
            );
            assert_eq!(clean, if whole == 0 { 0 } else { ends[whole - 1] });
        }
    }

    #[test]
    fn bit_flip_at_every_byte_yields_a_clean_prefix() {
        let (buf, payloads, ends) = sample();
        for at in 0..buf.len() {
            for bit in [0, 3, 7] {
                let mut b = buf.clone();
                b[at] ^= 1 << bit;
                let (got, _) = parse_frames(&b);
                let damaged = ends.iter().position(|e| *e > at).unwrap();
                assert_eq!(got.len(), damaged, "flip at byte {at} bit {bit}");
                assert_eq!(
                    got,
                    payloads[..damaged]
                        .iter()
                        .map(Vec::as_slice)
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// An append queued after a snapshot, before the writer wakes, must land in the
    /// new generation (regression: it was written to the old file, then deleted).
    #[tokio::test]
    async fn appends_after_a_snapshot_land_in_the_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_generation(dir.path(), 1, &[]).unwrap();
        let w = Writer::start(dir.path().to_path_buf(), 1, file, 0);
        let (mut a, mut snap, mut b) = (Vec::new(), Vec::new(), Vec::new());
        frame(&mut a, b"A");
        frame(&mut snap, b"SNAPSHOT-WITH-A");
        frame(&mut b, b"B");
        w.append(&a).unwrap().await.unwrap().unwrap();
        let rx = {
            // Both queued before the writer can take either.
            let mut q = w.shared.0.lock().unwrap();
            q.push_rotate(snap);
            let (tx, rx) = oneshot::channel();
            q.push(&b, tx).unwrap();
            w.shared.1.notify_one();
            rx
        };
        rx.await.unwrap().unwrap();
        w.close();
        let g = newest_generation(dir.path()).unwrap().unwrap();
        assert_eq!(g, 2);
        let got = recover_file(&log_path(dir.path(), g)).unwrap();
        assert_eq!(got, vec![b"SNAPSHOT-WITH-A".to_vec(), b"B".to_vec()]);
    }

    #[tokio::test]
    async fn barrier_waits_for_what_is_queued_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_generation(dir.path(), 1, &[]).unwrap();
        let w = Writer::start(dir.path().to_path_buf(), 1, file, 0);
        let mut a = Vec::new();
        frame(&mut a, b"A");
        let rx = {
            // A queued, not yet taken by the writer: the barrier must wait for it.
            let mut q = w.shared.0.lock().unwrap();
            let (tx, rx) = oneshot::channel();
            q.push(&a, tx).unwrap();
            rx
        };
        let barrier = w.barrier().unwrap().expect("something is pending");
        barrier.await.unwrap().unwrap();
        assert_eq!(
            recover_file(&log_path(dir.path(), 1)).unwrap(),
            vec![b"A".to_vec()],
            "on disk when the barrier resolves"
        );
        rx.await.unwrap().unwrap();
        assert!(w.barrier().unwrap().is_none(), "nothing pending: no wait");
        w.close();
    }

    #[test]
    fn recover_file_truncates_the_damaged_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (buf, payloads, ends) = sample();
        let path = log_path(dir.path(), 1);
        let mut damaged = buf[..ends[3] + 5].to_vec();
        damaged.extend_from_slice(b"garbage");
        fs::write(&path, &damaged).unwrap();
        assert_eq!(recover_file(&path).unwrap(), payloads[..4].to_vec());
        assert_eq!(fs::metadata(&path).unwrap().len(), ends[3] as u64);
        assert_eq!(newest_generation(dir.path()).unwrap(), Some(1));
    }

    /// Appends overwrite the zero-filled space; what was acknowledged reads back, and
    /// a batch larger than the space left grows the file first.
    #[tokio::test]
    async fn appends_fill_the_preallocated_space_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap = Vec::new();
        frame(&mut snap, b"SNAPSHOT");
        let file = write_generation(dir.path(), 1, &snap).unwrap();
        let path = log_path(dir.path(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            (snap.len() + HEADER + END_FRAME_LEN) as u64 + PREALLOCATE,
            "zeros follow the snapshot and its end frame"
        );
        let w = Writer::start(dir.path().to_path_buf(), 1, file, snap.len() as u64);
        let small: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("record {i}").into_bytes())
            .collect();
        for p in &small {
            let mut b = Vec::new();
            frame(&mut b, p);
            w.append(&b).unwrap().await.unwrap().unwrap();
        }
        let large = vec![7u8; PREALLOCATE as usize + 10];
        let mut b = Vec::new();
        frame(&mut b, &large);
        w.append(&b).unwrap().await.unwrap().unwrap();
        w.close();
        let mut expected = vec![b"SNAPSHOT".to_vec()];
        expected.extend(small);
        expected.push(large);
        let on_disk = fs::read(&path).unwrap();
        assert!(
            on_disk.len() as u64 > PREALLOCATE,
            "the file grew for the large batch"
        );
        let (frames, clean) = parse_frames(&on_disk);
        assert_eq!(frames.len(), expected.len());
        assert!(
            on_disk[clean..].iter().all(|b| *b == 0),
            "only zeros after the frames"
        );
        assert_eq!(recover_file(&path).unwrap(), expected);
    }

    /// Three batches through the writer; returns the file, each batch's payloads and
    /// the offset where each batch began.
    async fn three_batches(dir: &Path) -> (PathBuf, Vec<Vec<Vec<u8>>>, Vec<u64>) {
        let file = write_generation(dir, 1, &[]).unwrap();
        let w = Writer::start(dir.to_path_buf(), 1, file, 0);
        let mut batches = Vec::new();
        let mut begins = Vec::new();
        for b in 0..3 {
            let payloads: Vec<Vec<u8>> = (0..4)
                .map(|i| {
                    format!(
                        "{{\"batch\":{b},\"record\":{i},\"pad\":\"{}\"}}",
                        "p".repeat(700)
                    )
                    .into_bytes()
                })
                .collect();
            let mut framed = Vec::new();
            for p in &payloads {
                frame(&mut framed, p);
            }
            // The file begins with the (empty) snapshot's end frame.
            begins.push(w.shared.0.lock().unwrap().file_bytes + (HEADER + END_FRAME_LEN) as u64);
            w.append(&framed).unwrap().await.unwrap().unwrap();
            batches.push(payloads);
        }
        w.close();
        (log_path(dir, 1), batches, begins)
    }

    #[tokio::test]
    async fn damage_before_a_later_batch_refuses_recovery_and_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, begins) = three_batches(dir.path()).await;
        let mut data = fs::read(&path).unwrap();
        // A flipped bit in the first batch's second record: batches 2 and 3 were
        // acknowledged after it, and cutting there would drop them.
        let at = begins[0] as usize + 800;
        data[at] ^= 0x10;
        fs::write(&path, &data).unwrap();
        match recover_file(&path) {
            Err(Error::DamagedLog {
                damaged_at,
                proof_at,
                ..
            }) => {
                assert!(damaged_at > begins[0] && damaged_at <= at as u64);
                assert!(
                    proof_at > begins[1] && proof_at < begins[2],
                    "the second batch's end frame: {proof_at} {begins:?}"
                );
            }
            other => panic!("expected DamagedLog, got {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), data, "the file is left as it was");
    }

    /// A snapshot is written whole before its file is renamed into place: damage in it
    /// is no torn append, whether or not batches follow it.
    #[test]
    fn damage_in_a_snapshot_refuses_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _, ends) = sample();
        drop(write_generation(dir.path(), 1, &snapshot).unwrap());
        let path = log_path(dir.path(), 1);
        let whole = fs::read(&path).unwrap();
        for at in [3, ends[0] + 10, ends[4] + 2, ends[5] - 1] {
            let mut data = whole.clone();
            data[at] ^= 0x04;
            fs::write(&path, &data).unwrap();
            match recover_file(&path) {
                Err(Error::DamagedLog { proof_at, .. }) => {
                    assert_eq!(proof_at, *ends.last().unwrap() as u64, "byte {at}");
                }
                other => panic!("byte {at}: expected DamagedLog, got {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), data, "left as it was");
        }
        // Its end frame damaged alone: every record before it is whole, none lost.
        let mut data = whole.clone();
        data[ends[5] + 9] ^= 0x04;
        fs::write(&path, &data).unwrap();
        assert_eq!(recover_file(&path).unwrap().len(), ends.len());
    }

    #[tokio::test]
    async fn a_torn_last_batch_is_cut_off_whatever_of_it_reached_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (path, batches, begins) = three_batches(dir.path()).await;
        let whole = fs::read(&path).unwrap();
        let (_, end) = parse_frames(&whole);
        // A crash during the last append: one 512-byte sector of it never written
        // (still zeros), anywhere in it, its batch-end frame included.
        let last = begins[2] as usize;
        for sector in (last / 512)..end.div_ceil(512) {
            let mut data = whole.clone();
            for b in &mut data[(sector * 512).max(last)..((sector + 1) * 512).min(end)] {
                *b = 0;
            }
            fs::write(&path, &data).unwrap();
            let got = recover_file(&path).unwrap();
            let expected: Vec<Vec<u8>> = batches[..2].concat();
            assert_eq!(got[..8], expected[..], "sector {sector}");
            assert!(
                got.len() < 12,
                "sector {sector}: a record of the torn batch survived whole"
            );
        }
    }

    #[test]
    fn a_zero_header_ends_the_log() {
        let (mut buf, payloads, ends) = sample();
        buf.extend_from_slice(&[0; 64]);
        let (got, clean) = parse_frames(&buf);
        assert_eq!(got.len(), payloads.len());
        assert_eq!(clean, *ends.last().unwrap());
    }
}
