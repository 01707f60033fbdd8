//! The CPU backend's streams: events that fire at a stream clock's time (or
//! fail with their stream), the worker thread that serves a copy or
//! writeback stream's FIFO of jobs, and the (paced) copy those streams run.
//! See the parent module's docs for the clock and pacing rules.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{with_bufs, CpuBackend, CpuBuf};
use crate::{KernelError, Result, Rows, Stream};

/// The state of a CPU event.
#[derive(Clone, Debug)]
enum EvState {
    /// The stream has not reached it yet.
    Pending,
    /// The stream reached it at this time.
    Fired(Instant),
    /// The stream that should fire it failed (its worker panicked or
    /// stopped): it never will.
    Failed {
        stream: &'static str,
        message: String,
    },
}

/// A point on a stream: pending, fired with a time, or failed.
#[derive(Clone)]
pub(crate) struct CpuEvent {
    state: Arc<(Mutex<EvState>, Condvar)>,
}

impl CpuEvent {
    fn new() -> Self {
        CpuEvent {
            state: Arc::new((Mutex::new(EvState::Pending), Condvar::new())),
        }
    }
    pub(super) fn fired() -> Self {
        let e = Self::new();
        e.set(EvState::Fired(Instant::now()));
        e
    }
    fn set(&self, to: EvState) {
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*g, EvState::Pending) {
            *g = to;
        }
        cv.notify_all();
    }
    /// Blocks until the event fires (its time) or its stream fails (the
    /// stream's error). Never blocks forever: a worker that stops drops the
    /// [`Firing`] that would have fired it, which fails it.
    pub(super) fn wait(&self) -> Result<Instant> {
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*g {
                EvState::Pending => g = cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                EvState::Fired(t) => return Ok(*t),
                EvState::Failed { stream, message } => {
                    return Err(KernelError::StreamFailed {
                        device: "cpu".into(),
                        stream,
                        message: message.clone(),
                    })
                }
            }
        }
    }
}

/// Microseconds between two events (waits for both; reports a failed stream).
pub(crate) fn elapsed_us(start: &CpuEvent, end: &CpuEvent) -> Result<f64> {
    let a = start.wait()?;
    let b = end.wait()?;
    Ok(if b >= a {
        b.duration_since(a).as_secs_f64() * 1e6
    } else {
        -(a.duration_since(b).as_secs_f64() * 1e6)
    })
}

/// An event a worker is to fire. Dropped unfired (the worker stopped, or the
/// job queue was dropped with it), it fails the event, so no waiter hangs.
pub(super) struct Firing {
    event: CpuEvent,
    stream: &'static str,
}

impl Drop for Firing {
    fn drop(&mut self) {
        self.event.set(EvState::Failed {
            stream: self.stream,
            message: "the stream stopped before reaching this event".into(),
        });
    }
}

/// Work on a stream. A `Run` job's argument is the stream's clock: the time
/// the stream reaches the job, i.e. the later of when the previous job ended
/// and when this one was enqueued; the job moves it to when it ends.
pub(super) type RunJob = Box<dyn FnOnce(&mut Instant) -> Result<()> + Send>;

pub(super) enum Job {
    Run(RunJob),
    /// Fire the event at the stream's clock.
    Fire(Firing),
    /// Hold the stream until the event fires.
    Wait(CpuEvent),
}

/// Text of a panic payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a job panicked".to_string())
}

/// One stream served by a worker thread with a FIFO of jobs.
///
/// **Failure.** A job that returns an error or panics (caught with
/// `catch_unwind`) marks the stream failed with that message: the worker
/// keeps draining its queue but runs nothing more, and fails every event it
/// was to fire, so waiters get a [`KernelError::StreamFailed`] naming the
/// stream and the cause instead of blocking. `record`, `wait` and
/// `synchronize` report the failure too.
pub(super) struct Worker {
    name: &'static str,
    tx: Option<mpsc::Sender<(Instant, Job)>>,
    handle: Option<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Worker {
    pub(super) fn spawn(name: &'static str) -> Result<Worker> {
        let (tx, rx) = mpsc::channel::<(Instant, Job)>();
        let error = Arc::new(Mutex::new(None::<String>));
        let err = error.clone();
        let handle = std::thread::Builder::new()
            .name(format!("kvpr-{name}"))
            .spawn(move || {
                let mut clock = Instant::now();
                let failed = |message: String| {
                    let mut slot = err.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(message).clone()
                };
                let mut dead: Option<String> = None;
                for (enqueued, job) in rx {
                    clock = clock.max(enqueued);
                    match (job, &dead) {
                        (Job::Fire(f), None) => {
                            f.event.set(EvState::Fired(clock));
                        }
                        (Job::Fire(f), Some(message)) => f.event.set(EvState::Failed {
                            stream: name,
                            message: message.clone(),
                        }),
                        (_, Some(_)) => {}
                        (Job::Wait(ev), None) => match ev.wait() {
                            Ok(t) => clock = clock.max(t),
                            Err(e) => {
                                dead = Some(failed(format!("waited on an event that failed: {e}")))
                            }
                        },
                        (Job::Run(run), None) => {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                run(&mut clock)
                            }));
                            match r {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => dead = Some(failed(e.to_string())),
                                Err(p) => {
                                    dead = Some(failed(format!(
                                        "its worker thread panicked: {}",
                                        panic_message(&*p)
                                    )))
                                }
                            }
                        }
                    }
                }
            })
            .map_err(|e| KernelError::StreamFailed {
                device: "cpu".into(),
                stream: name,
                message: format!("could not start the worker thread: {e}"),
            })?;
        Ok(Worker {
            name,
            tx: Some(tx),
            handle: Some(handle),
            error,
        })
    }

    pub(super) fn push(&self, job: Job) -> Result<()> {
        let dead = || KernelError::StreamFailed {
            device: "cpu".into(),
            stream: self.name,
            message: "the worker thread has stopped".into(),
        };
        self.tx
            .as_ref()
            .ok_or_else(dead)?
            .send((Instant::now(), job))
            .map_err(|_| dead())
    }

    /// The stream's failure, if any. It stays failed: every later call reports it.
    pub(super) fn check(&self) -> Result<()> {
        match &*self.error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(message) => Err(KernelError::StreamFailed {
                device: "cpu".into(),
                stream: self.name,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// An event that fires when the stream reaches this point.
    pub(super) fn record(&self) -> Result<CpuEvent> {
        self.check()?;
        let event = CpuEvent::new();
        self.push(Job::Fire(Firing {
            event: event.clone(),
            stream: self.name,
        }))?;
        Ok(event)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sleeps until `deadline`, spinning the last ~100 µs.
pub(super) fn sleep_until(deadline: Instant) {
    const SPIN: Duration = Duration::from_micros(100);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

impl CpuBackend {
    /// Any copy: runs on the stream (paced if `paced` and a link bandwidth is set).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy(
        &self,
        stream: Stream,
        op: &'static str,
        src: &CpuBuf,
        src_off: usize,
        dst: &CpuBuf,
        dst_off: usize,
        rows: Rows,
        paced: bool,
    ) -> Result<()> {
        let (src, dst) = (src.clone(), dst.clone());
        let gbps = if paced { self.link_gbps } else { None };
        let bytes = rows.elements() as f64 * 4.0;
        let job = move |clock: &mut Instant| -> Result<()> {
            let start = *clock;
            // The link's time for these bytes; the data lands at the end of it.
            let window = match gbps {
                Some(g) => {
                    let secs = bytes / (g * 1e9);
                    let bad = |reason: String| KernelError::Shape {
                        op,
                        device: "cpu".into(),
                        shape: format!("{bytes} bytes at {g} GB/s"),
                        reason,
                    };
                    let d = Duration::try_from_secs_f64(secs).map_err(|e| {
                        bad(format!(
                            "the paced copy's time ({secs} s) is not a duration: {e}"
                        ))
                    })?;
                    let deadline = start.checked_add(d).ok_or_else(|| {
                        bad(format!(
                            "the paced copy's end ({secs} s from now) overflows the clock"
                        ))
                    })?;
                    sleep_until(deadline);
                    Some(d)
                }
                None => None,
            };
            let t0 = Instant::now();
            let run = |r: &[f32], w: &mut [f32]| {
                for i in 0..rows.rows {
                    let (s, d) = (src_off + i * rows.src_pitch, dst_off + i * rows.dst_pitch);
                    w[d..d + rows.width].copy_from_slice(&r[s..s + rows.width]);
                }
            };
            if src.same(&dst) {
                let mut g = dst.write();
                for i in 0..rows.rows {
                    let s = src_off + i * rows.src_pitch;
                    g.copy_within(s..s + rows.width, dst_off + i * rows.dst_pitch);
                }
            } else {
                with_bufs(&[&src], &dst, |r, w| run(r[0], w));
            }
            let work = t0.elapsed();
            // Saturating: `start + window` was checked above, and `work` is real time.
            *clock = start
                .checked_add(window.map_or(work, |w| w.max(work)))
                .unwrap_or_else(Instant::now);
            Ok(())
        };
        match self.worker(stream) {
            Some(w) => {
                w.check()?;
                w.push(Job::Run(Box::new(job)))
            }
            None => job(&mut Instant::now()),
        }
    }
}
