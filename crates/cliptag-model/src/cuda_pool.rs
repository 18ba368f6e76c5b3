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

use crate::error::{ModelError, Result};

/// Tells the default memory pool of `device`'s GPU to keep freed memory (no release
/// threshold). Does nothing for the CPU.
pub(crate) fn retain_freed_memory(device: &Device) -> Result<()> {
    let Device::Cuda(cuda) = device else {
        return Ok(());
    };
    let cu_device = cuda.cuda_stream().context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    let fail = |what: &str, e: sys::CUresult| ModelError::Device(format!("{what}: {e:?}"));
    // SAFETY: `pool` receives the device's default pool handle, which lives as long as the
    // driver; the release threshold attribute takes a pointer to a u64 that outlives the
    // call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device)
            .result()
            .map_err(|e| fail("cannot find the GPU's memory pool", e.0))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&raw mut threshold).cast(),
        )
        .result()
        .map_err(|e| fail("cannot keep freed memory in the GPU's memory pool", e.0))?;
    }
    Ok(())
}
