//! The routing-record spool: every batch of records is appended here before it is sent, and
//! forgotten only once the control plane has acknowledged storing it. While the control plane is
//! unreachable batches accumulate (up to a byte bound) and are replayed, oldest first, when it
//! is back; a restarted proxy replays what its predecessor left.
//!
//! On disk (`spool_dir`) the spool is a series of segment files `spool-<first seq>.log`, each a
//! sequence of frames (`u32` little-endian length, then a `ReportBatch` protobuf). A batch is on
//! disk — in the page cache, which survives the process being killed — before it is sent, so a
//! `kill -9` loses only records not yet appended: those still in the in-memory report queue.
//! A torn last frame (a crash mid-write) is cut off when the segment is read back. A segment is
//! deleted when every batch in it is acknowledged and it is no longer the one written to.
//!
//! Without `spool_dir` the same structure lives in memory (bounded the same way): it survives a
//! control-plane outage but not a restart of the proxy.
//!
//! The file operations are small appends and reads of recently written pages, done inline by
//! the report task (which nothing on the request path waits for).

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use llmhub_proto::v1 as pb;
use prost::Message;

/// A segment is sealed and a new one started past this size.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Longest frame accepted when reading back (a corrupt length must not allocate gigabytes).
const MAX_FRAME: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("spool full ({0} bytes)")]
    Full(u64),
}

struct Segment {
    /// The first sequence number written to it (names the file).
    id: u64,
    /// `None`: held in memory (`data`).
    file: Option<(PathBuf, File)>,
    data: Vec<u8>,
    bytes: u64,
    /// Batches in it not yet acknowledged.
    unacked: BTreeSet<u64>,
}

impl Segment {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match &self.file {
            Some((_, f)) => f.read_exact_at(buf, offset),
            None => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let src = self
                    .data
                    .get(start..start.saturating_add(buf.len()))
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

pub struct Spool {
    dir: Option<PathBuf>,
    max_bytes: u64,
    segments: VecDeque<Segment>,
    /// Next frame to send: (segment id, byte offset).
    cursor: (u64, u64),
    next_seq: u64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("bytes", &self.bytes())
            .field("unacked", &self.unacked())
            .finish_non_exhaustive()
    }
}

fn frames(data: &[u8]) -> (Vec<pb::ReportBatch>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(len) = data.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if len > MAX_FRAME {
            break;
        }
        let Some(body) = data.get(at + 4..at + 4 + len as usize) else {
            break;
        };
        match pb::ReportBatch::decode(body) {
            Ok(b) => out.push(b),
            Err(_) => break,
        }
        at += 4 + len as usize;
    }
    (out, at as u64)
}

impl Spool {
    /// A spool in memory only.
    pub fn memory(max_bytes: u64) -> Spool {
        Spool {
            dir: None,
            max_bytes,
            segments: VecDeque::new(),
            cursor: (0, 0),
            next_seq: 1,
        }
    }

    /// Opens (creating) the spool directory and takes over the segments a previous process left:
    /// their unacknowledged batches are sent first.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |e| SpoolError::Io(dir.to_owned(), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Records name users, models and key fingerprints: not for other local users.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("spool-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        let mut spool = Spool {
            dir: Some(dir.to_owned()),
            ..Spool::memory(max_bytes)
        };
        for id in ids {
            let path = dir.join(format!("spool-{id}.log"));
            let pio = |e| SpoolError::Io(path.clone(), e);
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(pio)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(pio)?;
            let (batches, good) = frames(&data);
            if good < data.len() as u64 {
                tracing::warn!(path = %path.display(), kept = good, "spool segment had a torn tail; cut off");
                file.set_len(good).map_err(pio)?;
            }
            // Appends continue where the good frames end.
            file.seek(SeekFrom::Start(good)).map_err(pio)?;
            if batches.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let unacked: BTreeSet<u64> = batches.iter().map(|b| b.seq).collect();
            spool.next_seq = spool.next_seq.max(unacked.last().copied().unwrap_or(0) + 1);
            spool.segments.push_back(Segment {
                id,
                file: Some((path, file)),
                data: Vec::new(),
                bytes: good,
                unacked,
            });
        }
        spool.rewind();
        if spool.unacked() > 0 {
            tracing::info!(
                batches = spool.unacked(),
                "routing records left by a previous run will be sent"
            );
        }
        Ok(spool)
    }

    /// A sequence number for a batch that is not spooled (key outcomes).
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Batches not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.segments.iter().map(|s| s.unacked.len()).sum()
    }

    /// Appends a batch (assigning its sequence number). `Full`: nothing was written.
    pub fn append(&mut self, mut batch: pb::ReportBatch) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        batch.seq = seq;
        let body = batch.encode_to_vec();
        let frame_len = 4 + body.len() as u64;
        if self.bytes() + frame_len > self.max_bytes {
            return Err(SpoolError::Full(self.max_bytes));
        }
        let roll = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + frame_len > SEGMENT_BYTES && s.bytes > 0);
        if roll {
            self.start_segment(seq)?;
        }
        let mut frame = Vec::with_capacity(frame_len as usize);
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        frame.extend_from_slice(&body);
        let Some(seg) = self.segments.back_mut() else {
            unreachable!("a segment was just started")
        };
        match &mut seg.file {
            Some((path, f)) => {
                if let Err(e) = f.write_all(&frame) {
                    // A partial frame would be cut off on reading back; keep the length honest.
                    let _ = f.set_len(seg.bytes);
                    let _ = f.seek(SeekFrom::Start(seg.bytes));
                    return Err(SpoolError::Io(path.clone(), e));
                }
            }
            None => seg.data.extend_from_slice(&frame),
        }
        seg.bytes += frame_len;
        seg.unacked.insert(seq);
        self.next_seq += 1;
        Ok(seq)
    }

    fn start_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let file = match &self.dir {
            Some(dir) => {
                let path = dir.join(format!("spool-{id}.log"));
                let mut opts = OpenOptions::new();
                opts.create(true).truncate(true).read(true).write(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let f = opts
                    .open(&path)
                    .map_err(|e| SpoolError::Io(path.clone(), e))?;
                Some((path, f))
            }
            None => None,
        };
        self.segments.push_back(Segment {
            id,
            file,
            data: Vec::new(),
            bytes: 0,
            unacked: BTreeSet::new(),
        });
        Ok(())
    }

    /// Starts sending again from the oldest unacknowledged batch (after a reconnect).
    pub fn rewind(&mut self) {
        self.cursor = (self.segments.front().map_or(0, |s| s.id), 0);
    }

    /// The next unacknowledged batch after the cursor, moving past it.
    pub fn next_batch(&mut self) -> Result<Option<pb::ReportBatch>, SpoolError> {
        loop {
            let (id, offset) = self.cursor;
            let Some(i) = self.segments.iter().position(|s| s.id >= id) else {
                return Ok(None);
            };
            let seg = &self.segments[i];
            let offset = if seg.id == id { offset } else { 0 };
            if offset >= seg.bytes {
                match self.segments.get(i + 1) {
                    Some(next) => {
                        self.cursor = (next.id, 0);
                        continue;
                    }
                    None => {
                        self.cursor = (seg.id, offset);
                        return Ok(None);
                    }
                }
            }
            let io = |e| {
                SpoolError::Io(
                    seg.file
                        .as_ref()
                        .map_or_else(PathBuf::new, |(p, _)| p.clone()),
                    e,
                )
            };
            let mut len = [0u8; 4];
            seg.read_at(&mut len, offset).map_err(io)?;
            let len = u32::from_le_bytes(len).min(MAX_FRAME) as usize;
            let mut body = vec![0u8; len];
            seg.read_at(&mut body, offset + 4).map_err(io)?;
            self.cursor = (seg.id, offset + 4 + len as u64);
            let batch = pb::ReportBatch::decode(body.as_slice())
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            // Acknowledged already (sent before a reconnect): skip.
            if seg.unacked.contains(&batch.seq) {
                return Ok(Some(batch));
            }
        }
    }

    /// Whether a batch is waiting after the cursor.
    pub fn has_next(&self) -> bool {
        let (id, offset) = self.cursor;
        self.segments
            .iter()
            .any(|s| (s.id > id || (s.id == id && s.bytes > offset)) && !s.unacked.is_empty())
    }

    /// The control plane stored batch `seq`. A segment whose batches are all stored is deleted
    /// unless it is still being written to. Returns whether `seq` was a spooled batch.
    pub fn ack(&mut self, seq: u64) -> bool {
        let Some(i) = self.segments.iter().rposition(|s| s.id <= seq) else {
            return false;
        };
        if !self.segments[i].unacked.remove(&seq) {
            return false;
        }
        let mut i = 0;
        while i + 1 < self.segments.len() {
            if self.segments[i].unacked.is_empty() {
                if let Some(Segment {
                    file: Some((path, _)),
                    ..
                }) = self.segments.remove(i)
                {
                    let _ = std::fs::remove_file(path);
                }
            } else {
                i += 1;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> pb::ReportBatch {
        pb::ReportBatch {
            records: (0..n)
                .map(|i| pb::RoutingRecord {
                    request_id: format!("req_{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn drain(s: &mut Spool) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(b) = s.next_batch().unwrap() {
            out.push(b.seq);
        }
        out
    }

    #[test]
    fn batches_are_sent_once_each_then_again_after_a_rewind_until_acknowledged() {
        let mut s = Spool::memory(1 << 20);
        let a = s.append(batch(2)).unwrap();
        let b = s.append(batch(1)).unwrap();
        assert_eq!(drain(&mut s), [a, b]);
        assert!(!s.has_next());
        let c = s.append(batch(1)).unwrap();
        assert!(s.has_next());
        assert_eq!(drain(&mut s), [c]);
        assert!(s.ack(b));
        s.rewind();
        assert_eq!(
            drain(&mut s),
            [a, c],
            "the acknowledged batch is not resent"
        );
        assert!(s.ack(a) && s.ack(c));
        assert_eq!(s.unacked(), 0);
        assert!(!s.ack(99), "not a spooled batch");
    }

    #[test]
    fn the_byte_bound_refuses_rather_than_grows() {
        let mut s = Spool::memory(300);
        let mut n = 0;
        while s.append(batch(3)).is_ok() {
            n += 1;
        }
        assert!(
            n > 0 && s.bytes() <= 300,
            "{n} batches, {} bytes",
            s.bytes()
        );
        assert!(matches!(s.append(batch(1)), Err(SpoolError::Full(300))));
    }

    #[test]
    fn a_restarted_proxy_resends_what_was_not_acknowledged_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c);
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            a = s.append(batch(2)).unwrap();
            b = s.append(batch(2)).unwrap();
            c = s.append(batch(2)).unwrap();
            drain(&mut s);
            s.ack(b);
            // Dropped without acknowledging `a` and `c`: a crash.
        }
        // A crash mid-write leaves half a frame at the end.
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        // `b` was acknowledged but its segment not yet deleted: the control plane deduplicates
        // by request id, so resending it is harmless.
        assert_eq!(drain(&mut s), [a, b, c]);
        let d = s.append(batch(1)).unwrap();
        assert!(d > c, "sequence numbers continue past the old ones");
        for seq in [a, b, c, d] {
            s.ack(seq);
        }
        assert_eq!(s.unacked(), 0);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 64 << 20).unwrap();
        // Big batches to fill more than one segment.
        let big = || pb::ReportBatch {
            records: vec![pb::RoutingRecord {
                request_id: "x".repeat(3 << 20),
                ..Default::default()
            }],
            ..Default::default()
        };
        let seqs: Vec<u64> = (0..4).map(|_| s.append(big()).unwrap()).collect();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files() >= 2, "{} segment files", files());
        drain(&mut s);
        for seq in &seqs {
            s.ack(*seq);
        }
        assert_eq!(files(), 1, "only the segment still written to remains");
    }
}
