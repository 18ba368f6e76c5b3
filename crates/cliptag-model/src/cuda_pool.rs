//! Device memory that stays with the process between batches.
//!
//! candle allocates every tensor from the CUDA driver's stream-ordered memory pool and
//! frees it when the tensor drops. The pool's default release threshold is zero: at every
//! synchronization (each batch, when results come back to the host) it hands all unused
//! memory back to the driver, so the next batch maps its whole working set afresh, which
//! costs time in proportion to the batch. Keeping the memory in the pool makes later
//! batches reuse it, as PyTorch's caching allocator does.

use candle_core::Device;
use candle_core::cuda_backend::cudarc::driver::sys;

/// Tells the default memory pool of `device`'s GPU to keep freed memory (no release
/// threshold). Best effort: a device without memory pools (candle then allocates
/// without one) or a driver that refuses is left as it is, and inference runs the same,
/// only without the reuse. Does nothing for the CPU.
pub(crate) fn retain_freed_memory(device: &Device) {
    let Device::Cuda(cuda) = device else {
        return;
    };
    let stream = cuda.cuda_stream();
    let context = stream.context();
    if !context.has_async_alloc() {
        return;
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the device's default pool handle, which lives as long as the
    // driver; the release threshold attribute takes a pointer to a u64 that outlives the
    // call. Both calls only read or set driver state; their results are checked.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device())
            .result()
            .is_ok()
        {
            // A refusal leaves the default threshold: nothing else depends on it.
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&raw mut threshold).cast(),
            )
            .result();
        }
    }
}
