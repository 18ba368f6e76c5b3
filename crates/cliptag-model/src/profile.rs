//! Where a forward pass spends its time, stage by stage, on any device.
//!
//! Inside [`record`], every stage of the towers (patch embedding, each block's norms,
//! projections, attention, MLP, residual adds, ...) waits for the device before it
//! starts and after it ends, and its wall time is added up under its name. The waits
//! serialize the GPU's queue, so the total is a little above an unprofiled pass, but
//! each stage's share shows which kernels the time goes to: no profiler needs to be
//! installed. Outside `record`, stages cost one thread-local read.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::error::Result;

/// Time spent in one named stage over a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTime {
    /// The stage, e.g. `"mlp fc1 + activation"`.
    pub name: &'static str,
    /// Total wall time in it, device work included.
    pub total: Duration,
    /// How many times it ran.
    pub calls: u32,
}

thread_local! {
    static STAGES: RefCell<Option<Vec<StageTime>>> = const { RefCell::new(None) };
}

/// Runs `f` with stage timing on for this thread and returns its result with the time
/// of every stage it ran, in the order each first ran. Recordings do not nest: an inner
/// one takes over the stages until it ends.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<StageTime>) {
    /// Puts the outer recording (or none) back when `record` ends, unwinding included.
    struct Restore(Option<Vec<StageTime>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            STAGES.with(|s| *s.borrow_mut() = outer);
        }
    }
    let restore = Restore(STAGES.with(|s| s.borrow_mut().replace(Vec::new())));
    let out = f();
    let stages = STAGES.with(|s| s.borrow_mut().take());
    drop(restore);
    (out, stages.unwrap_or_default())
}

/// Whether stages are being recorded on this thread.
fn recording() -> bool {
    STAGES.with(|s| s.borrow().is_some())
}

/// Runs one stage of a forward pass, timed when a recording is on.
pub(crate) fn stage<T>(
    name: &'static str,
    device: &Device,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !recording() {
        return f();
    }
    device.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let took = start.elapsed();
    STAGES.with(|s| {
        if let Some(stages) = s.borrow_mut().as_mut() {
            match stages.iter_mut().find(|t| t.name == name) {
                Some(t) => {
                    t.total += took;
                    t.calls += 1;
                }
                None => stages.push(StageTime {
                    name,
                    total: took,
                    calls: 1,
                }),
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_timed_only_inside_a_recording() -> Result<()> {
        let device = Device::Cpu;
        stage("outside", &device, || Ok(()))?;
        let (value, stages) = record(|| -> Result<u32> {
            for _ in 0..3 {
                stage("sleep", &device, || {
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(())
                })?;
            }
            stage("other", &device, || Ok(7))
        });
        assert_eq!(value?, 7);
        let names: Vec<_> = stages.iter().map(|s| (s.name, s.calls)).collect();
        assert_eq!(names, [("sleep", 3), ("other", 1)]);
        assert!(stages[0].total >= Duration::from_millis(6));
        // Off again afterwards, and after a recording that panicked.
        assert!(!recording());
        let unwound = std::panic::catch_unwind(|| record(|| panic!("in a stage")));
        assert!(unwound.is_err());
        assert!(!recording());
        Ok(())
    }
}
