//! Warming up for a large batch allocates for a few frames, not for the batch: a
//! counting allocator measures the peak (its own test binary, so that no other test
//! allocates at the same time).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cliptag_engine::{Engine, EngineConfig, WARM_UP_FRAMES};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                + (new_size - layout.size());
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn warming_up_for_1024_frames_allocates_for_a_few() {
    let engine = Engine::new(EngineConfig {
        max_batch: 1024,
        ..EngineConfig::default()
    })
    .expect("engine");
    let s = engine.model().network.image_size();
    // One frame's pixels in f32: what every frame of the batch would cost at least.
    let per_frame = 3 * s * s * 4;
    let small = engine.warm_up(1).expect("warm up 1");
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let estimate = engine.warm_up(1024).expect("warm up 1024");
    let grew = PEAK.load(Ordering::Relaxed) - before;
    assert!(
        grew < 16 * WARM_UP_FRAMES * per_frame,
        "warming up for 1024 frames took {} MB at its peak (one frame's pixels: {} KB)",
        grew >> 20,
        per_frame >> 10
    );
    // The estimate still scales with the batch.
    assert!(
        estimate > small,
        "{estimate:?} for 1024 frames, {small:?} for 1"
    );
    assert!(estimate < Duration::from_secs(3600));
}
