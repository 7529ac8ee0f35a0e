//! Group commit: one fsync serves every writer waiting at that moment. A writer whose
//! data is in the log asks for a flush; if none is running it becomes the leader and
//! flushes everything written so far, otherwise it waits for the next flush that
//! *starts* after its request — which therefore covers its write. Each writer still
//! returns only once its own data is on disk; under concurrency the number of fsyncs
//! drops from one per writer to about one per disk round-trip.

use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Default)]
struct Progress {
    /// Flush requests so far (a ticket counter).
    requested: u64,
    /// Every request up to this ticket is on disk.
    completed: u64,
    running: bool,
}

#[derive(Default)]
pub struct GroupFlush {
    progress: Mutex<Progress>,
    finished: Condvar,
}

impl GroupFlush {
    /// Returns once everything written before this call is durable, running `flush`
    /// (which must make everything written so far durable) as leader when needed.
    pub fn flush<E>(&self, flush: impl Fn() -> Result<(), E>) -> Result<(), E> {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.requested += 1;
        let ticket = progress.requested;
        loop {
            if progress.completed >= ticket {
                return Ok(());
            }
            if progress.running {
                progress = self.finished.wait(progress).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            progress.running = true;
            let covers = progress.requested;
            drop(progress);
            let result = flush();
            progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            progress.running = false;
            if result.is_ok() {
                progress.completed = progress.completed.max(covers);
            }
            self.finished.notify_all();
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn concurrent_writers_share_flushes_and_each_waits_for_one_that_covers_it() {
        let group = Arc::new(GroupFlush::default());
        let written = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..32)
            .map(|_| {
                let (group, written, durable, flushes) = (
                    Arc::clone(&group),
                    Arc::clone(&written),
                    Arc::clone(&durable),
                    Arc::clone(&flushes),
                );
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                        group
                            .flush(|| {
                                let upto = written.load(Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(1));
                                flushes.fetch_add(1, Ordering::SeqCst);
                                durable.fetch_max(upto, Ordering::SeqCst);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                        assert!(
                            durable.load(Ordering::SeqCst) >= mine,
                            "returned before its write was flushed"
                        );
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let flushes = flushes.load(Ordering::SeqCst);
        assert!(flushes < 640 / 2, "{flushes} flushes for 640 writes");
    }

    #[test]
    fn a_failed_flush_is_reported_and_the_next_writer_tries_again() {
        let group = GroupFlush::default();
        assert_eq!(group.flush(|| Err("disk")), Err("disk"));
        assert_eq!(group.flush(|| Ok::<(), &str>(())), Ok(()));
    }
}
