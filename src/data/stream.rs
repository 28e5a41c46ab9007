//! Batches decoded by worker threads and handed out in order. At most `depth` batches are
//! in flight (being decoded, queued, or waiting for an earlier one), so memory stays
//! O(batch × depth) whatever the dataset's size.
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Which batch the next worker takes, how many the consumer has taken, and whether to stop.
struct Gate {
    state: Mutex<(usize, usize, bool)>,
    turn: Condvar,
}

/// `job(0)`, `job(1)`, … `job(total - 1)`, computed by `workers` threads, yielded in order.
pub struct Ordered<T: Send + 'static> {
    rx: Option<Receiver<(usize, Result<T>)>>,
    pending: BTreeMap<usize, Result<T>>,
    next: usize,
    total: usize,
    gate: Arc<Gate>,
    handles: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> Ordered<T> {
    pub fn new(
        total: usize,
        workers: usize,
        depth: usize,
        job: impl Fn(usize) -> Result<T> + Send + Sync + 'static,
    ) -> Self {
        let (tx, rx) = channel();
        let gate = Arc::new(Gate { state: Mutex::new((0, 0, false)), turn: Condvar::new() });
        let job = Arc::new(job);
        let depth = depth.max(1);
        let handles = (0..workers.max(1))
            .map(|_| {
                let (tx, gate, job) = (tx.clone(), gate.clone(), job.clone());
                std::thread::spawn(move || loop {
                    let i = {
                        let mut s = gate.state.lock().unwrap_or_else(|e| e.into_inner());
                        // Batches are issued in order and only `depth` ahead of the consumer:
                        // the one it waits for is always issued, so this cannot deadlock.
                        while !s.2 && s.0 < total && s.0 >= s.1 + depth {
                            s = gate.turn.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                        if s.2 || s.0 >= total {
                            return;
                        }
                        s.0 += 1;
                        s.0 - 1
                    };
                    // A panic in one batch must not leave the consumer waiting for it forever.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i)))
                        .unwrap_or_else(|_| Err(anyhow!("a decoding thread panicked on batch {i}")));
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Ordered { rx: Some(rx), pending: BTreeMap::new(), next: 0, total, gate, handles }
    }

    fn stop(&mut self) {
        let mut s = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        s.2 = true;
        drop(s);
        self.gate.turn.notify_all();
    }
}

impl<T: Send + 'static> Iterator for Ordered<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.next >= self.total {
            return None;
        }
        loop {
            if let Some(r) = self.pending.remove(&self.next) {
                self.next += 1;
                self.gate.state.lock().unwrap_or_else(|e| e.into_inner()).1 += 1;
                self.gate.turn.notify_all();
                return Some(r);
            }
            match self.rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok((i, r))) => {
                    self.pending.insert(i, r);
                }
                _ => {
                    self.next = self.total;
                    return Some(Err(anyhow!("the decoding threads stopped early")));
                }
            }
        }
    }
}

impl<T: Send + 'static> Drop for Ordered<T> {
    fn drop(&mut self) {
        self.stop();
        // Workers blocked on a send see the closed channel and exit.
        self.rx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn yields_every_batch_in_order_with_bounded_lookahead() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (f, m) = (in_flight.clone(), most.clone());
        let it = Ordered::new(200, 4, 3, move |i| {
            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            // Later batches finish first sometimes: the consumer must still see 0, 1, 2, …
            std::thread::sleep(std::time::Duration::from_micros(((i * 7919) % 13) as u64 * 50));
            f.fetch_sub(1, Ordering::SeqCst);
            Ok(i)
        });
        let got: Vec<usize> = it.map(|r| r.unwrap()).collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 3, "more than depth batches in flight");
    }

    #[test]
    fn errors_and_panics_arrive_in_place_and_dropping_early_joins() {
        let mut it = Ordered::new(10, 2, 2, |i| match i {
            3 => Err(anyhow!("bad batch")),
            5 => panic!("boom"),
            _ => Ok(i),
        });
        assert_eq!(it.next().unwrap().unwrap(), 0);
        assert_eq!(it.nth(2).unwrap().unwrap_err().to_string(), "bad batch");
        assert_eq!(it.next().unwrap().unwrap(), 4);
        assert!(it.next().unwrap().unwrap_err().to_string().contains("panicked"));
        drop(it);
    }
}
