//! The MIME of accepted messages, kept out of sled's leaves in append-only segment
//! files (`<data dir>/mime-log/<number>.seg`).
//!
//! Why: sled copies a leaf for every insert and rewrites whole leaves to its log on
//! consolidation and on splits, so a 2 KB MIME stored as a value reached the disk about
//! six times (`cargo bench --bench store_cycle`: 13 KB of the ~30 KB written per
//! message). Here the bytes are written once; sled holds a [`MimeRef`] of 26 bytes.
//!
//! Durability: the writer appends a batch's MIME and syncs it *before* the transaction
//! that stores the references commits, so a stored reference never points at bytes that
//! are not on disk. Each start appends to a new segment, so a torn tail of the previous
//! run is never appended to. A segment is deleted once no stored reference points into
//! it (the live counts are kept by the store, in its transactions).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A segment is closed once it holds this much, so that retention can delete whole
/// files instead of rewriting them. Small enough that disk use under a short
/// `mime_retention` trails it by a few MiB (a segment goes only once all of it has
/// expired), large enough that rotating (two fsyncs) is rare: every ~4,000 2 KB messages.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Closed segments kept open for reading, at most: a file handle per segment for as
/// long as retention keeps it would run into the open-file limit.
const OPEN_READERS: usize = 16;

/// Marks a stored value as a reference: raw MIME (stored by earlier versions) starts
/// with a header name, never with a NUL.
const MAGIC: &[u8; 6] = b"\0MGREF";

/// Where one message's MIME lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MimeRef {
    pub segment: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

impl MimeRef {
    /// The value stored in the `mime` tree.
    pub fn encode(&self) -> [u8; 26] {
        let mut value = [0u8; 26];
        value[..6].copy_from_slice(MAGIC);
        value[6..10].copy_from_slice(&self.segment.to_be_bytes());
        value[10..18].copy_from_slice(&self.offset.to_be_bytes());
        value[18..22].copy_from_slice(&self.len.to_be_bytes());
        value[22..26].copy_from_slice(&self.crc.to_be_bytes());
        value
    }

    /// The reference in a stored value, or `None` for raw MIME stored inline.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() != 26 || !value.starts_with(MAGIC) {
            return None;
        }
        let word = |at: usize| {
            value
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        };
        let offset = value
            .get(10..18)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        Some(Self {
            segment: word(6)?,
            offset: offset?,
            len: word(18)?,
            crc: word(22)?,
        })
    }
}

/// The segment being appended to.
struct Current {
    number: u32,
    file: Arc<File>,
    len: u64,
    /// Appended since the last sync.
    dirty: bool,
    /// A write failed and the file's length could not be read back: where the next
    /// bytes land is unknown, so the next append starts a new segment.
    broken: bool,
}

pub(super) struct MimeLog {
    dir: PathBuf,
    current: Mutex<Current>,
    /// Open handles of segments read recently (closed segments are read-only), the
    /// newest [`OPEN_READERS`] of them.
    readers: Mutex<BTreeMap<u32, Arc<File>>>,
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:010}.seg"))
}

/// The segment numbers present in `dir`, in order.
fn segments_in(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            name.to_str()?.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

fn create_segment(dir: &Path, number: u32) -> std::io::Result<Arc<File>> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(segment_path(dir, number))?;
    // The new file's directory entry must survive a crash as well as its bytes.
    File::open(dir)?.sync_all()?;
    Ok(Arc::new(file))
}

impl MimeLog {
    /// Opens the log in `dir` (created if missing), deleting the segments `live` says
    /// nothing points into, and starts a new segment for this run.
    pub fn open(dir: &Path, live: impl Fn(u32) -> bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let existing = segments_in(dir)?;
        for number in &existing {
            if !live(*number) {
                std::fs::remove_file(segment_path(dir, *number))?;
            }
        }
        let number = existing.last().map_or(1, |n| n.saturating_add(1));
        let file = create_segment(dir, number)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Mutex::new(Current {
                number,
                file,
                len: 0,
                dirty: false,
                broken: false,
            }),
            readers: Mutex::default(),
        })
    }

    /// The segment new MIME goes to (never deleted while it is being appended to).
    pub fn current_segment(&self) -> u32 {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).number
    }

    /// Appends each of `mimes` with one write per segment touched; durable after the
    /// next [`Self::sync`].
    pub fn append(&self, mimes: &[&[u8]]) -> std::io::Result<Vec<MimeRef>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let total = mimes.iter().map(|mime| mime.len()).sum::<usize>();
        let mut pending = Vec::with_capacity(total.min(SEGMENT_BYTES as usize));
        let mut refs = Vec::with_capacity(mimes.len());
        for mime in mimes.iter().copied() {
            let len = u32::try_from(mime.len())
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "MIME over 4 GiB"))?;
            let end = current.len + pending.len() as u64;
            if current.broken || (end > 0 && end + u64::from(len) > SEGMENT_BYTES) {
                self.write_out(&mut current, &mut pending)?;
                current.file.sync_data()?;
                let number = current.number.saturating_add(1);
                *current = Current {
                    number,
                    file: create_segment(&self.dir, number)?,
                    len: 0,
                    dirty: false,
                    broken: false,
                };
            }
            refs.push(MimeRef {
                segment: current.number,
                offset: current.len + pending.len() as u64,
                len,
                crc: crc32fast::hash(mime),
            });
            pending.extend_from_slice(mime);
        }
        self.write_out(&mut current, &mut pending)?;
        Ok(refs)
    }

    fn write_out(&self, current: &mut Current, pending: &mut Vec<u8>) -> std::io::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        current.dirty = true;
        let written = (&*current.file).write_all(pending);
        let pending_len = pending.len() as u64;
        pending.clear();
        match written {
            Ok(()) => {
                current.len += pending_len;
                Ok(())
            }
            Err(err) => {
                // A full disk can leave part of the batch written: later offsets count
                // from where the file really ends (the part is never referenced), or
                // from a new segment when that cannot be read.
                match current.file.metadata() {
                    Ok(meta) => current.len = meta.len(),
                    Err(_) => current.broken = true,
                }
                Err(err)
            }
        }
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.dirty {
            current.file.sync_data()?;
            current.dirty = false;
        }
        Ok(())
    }

    /// The bytes `at` points to; `None` when they are not there as written (a segment
    /// deleted or damaged outside mailgate).
    pub fn read(&self, at: &MimeRef) -> std::io::Result<Option<Vec<u8>>> {
        let Some(file) = self.reader(at.segment)? else {
            return Ok(None);
        };
        let mut mime = vec![0; at.len as usize];
        match file.read_exact_at(&mut mime, at.offset) {
            Ok(()) => Ok((crc32fast::hash(&mime) == at.crc).then_some(mime)),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn reader(&self, segment: u32) -> std::io::Result<Option<Arc<File>>> {
        {
            let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.number == segment {
                return Ok(Some(Arc::clone(&current.file)));
            }
        }
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = readers.get(&segment) {
            return Ok(Some(Arc::clone(file)));
        }
        match File::open(segment_path(&self.dir, segment)) {
            Ok(file) => {
                let file = Arc::new(file);
                if readers.len() >= OPEN_READERS {
                    readers.pop_first();
                }
                readers.insert(segment, Arc::clone(&file));
                Ok(Some(file))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Deletes a closed segment nothing points into any more.
    pub fn delete(&self, segment: u32) -> std::io::Result<()> {
        if segment == self.current_segment() {
            return Ok(());
        }
        // Unlinked under the readers' lock, so no reader can open it meanwhile and
        // keep a handle to a deleted file.
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        readers.remove(&segment);
        match std::fs::remove_file(segment_path(&self.dir, segment)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_mime_reads_back_after_a_restart_which_writes_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = MimeLog::open(dir.path(), |_| true).unwrap();
        let [first, second] = log
            .append(&[b"Subject: one\r\n\r\nbody", b"Subject: two\r\n\r\nbody"])
            .unwrap()[..]
        else {
            panic!("two references")
        };
        log.sync().unwrap();
        assert_eq!(MimeRef::decode(&first.encode()), Some(first));
        assert_eq!(log.read(&second).unwrap().unwrap(), b"Subject: two\r\n\r\nbody");
        drop(log);

        let log = MimeLog::open(dir.path(), |_| true).unwrap();
        assert_eq!(log.current_segment(), first.segment + 1);
        assert_eq!(log.read(&first).unwrap().unwrap(), b"Subject: one\r\n\r\nbody");
    }

    #[test]
    fn raw_mime_is_not_taken_for_a_reference() {
        assert_eq!(MimeRef::decode(b"From: a@example.test\r\nTo: b@example.test\r\n"), None);
        assert_eq!(MimeRef::decode(b"mime"), None);
    }

    #[test]
    fn damaged_or_deleted_bytes_read_as_none_and_dead_segments_go_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = MimeLog::open(dir.path(), |_| true).unwrap();
        let kept = log.append(&[b"kept"]).unwrap()[0];
        log.sync().unwrap();
        let mut wrong = kept;
        wrong.crc ^= 1;
        assert_eq!(log.read(&wrong).unwrap(), None, "a checksum mismatch");
        drop(log);

        let log = MimeLog::open(dir.path(), |segment| segment != kept.segment).unwrap();
        assert_eq!(log.read(&kept).unwrap(), None, "its segment was dead, so deleted");
        assert_eq!(segments_in(dir.path()).unwrap(), vec![kept.segment + 1]);
    }
}
