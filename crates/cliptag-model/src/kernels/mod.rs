//! CPU kernels, where candle's generic ops leave most of the time on the table; every
//! other device and type goes through candle.
//!
//! - linear layers on weights packed once at load (`packed`, `microkernel`): AVX-512 f32
//!   and AVX512_BF16 register tiles, or AMX tiles for bf16 (`amx`), with bias,
//!   `quick_gelu` and the residual applied in the store, chosen at run time (`isa`);
//!   without AVX-512, one `gemm` call that
//!   accumulates onto the bias, with the output columns split across threads at batch 1;
//! - attention read out of the fused QKV projection in place, one job per (sequence,
//!   head), instead of split, transpose and merge copies;
//! - layer norm in one pass per row, `quick_gelu` and residual adds in place (as three
//!   generic ops, scale, sigmoid and multiply, `quick_gelu` alone took longer than the
//!   MLP's two matmuls in ViT-B/32).

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::error::Result;

#[cfg(target_arch = "x86_64")]
mod amx;
mod heap;
pub mod isa;
mod microkernel;
pub(crate) mod packed;

pub use isa::CpuFeatures;
pub use packed::PackedType;

/// How a model's weights are held and its matmuls computed on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulPlan {
    /// The type the weight tensors are loaded in.
    pub tensors: DType,
    /// The linear layers' weights packed for the CPU kernels, in this type.
    pub packed: Option<PackedType>,
    /// The precision the matmuls actually run in: what reports name.
    pub computes: DType,
}

impl MatmulPlan {
    /// The plan for a requested type on a device, given the CPU's features.
    ///
    /// On the CPU, f32 runs on packed f32 weights where AVX-512 is present; bf16 runs on
    /// packed bf16 weights with f32 activations, accumulation, norms and softmax where
    /// the CPU has bf16 dot products, and as f32 elsewhere (bf16 through generic code
    /// would be several times slower than f32); f16 goes through candle. Other devices
    /// hold the requested type.
    pub fn new(requested: DType, device: &Device, features: CpuFeatures) -> Self {
        let plain = |dtype| Self {
            tensors: dtype,
            packed: None,
            computes: dtype,
        };
        if !device.is_cpu() {
            return plain(requested);
        }
        let f32_plan = Self {
            tensors: DType::F32,
            packed: features.avx512f.then_some(PackedType::F32),
            computes: DType::F32,
        };
        match requested {
            DType::F32 => f32_plan,
            DType::BF16 if features.native_bf16() => Self {
                tensors: DType::F32,
                packed: Some(PackedType::Bf16),
                computes: DType::BF16,
            },
            DType::BF16 => f32_plan,
            other => plain(other),
        }
    }

    /// bf16 matmuls on packed weights with f32 activations, on the CPU whatever its
    /// features: bf16 dot products where it has them, portable code with the same
    /// numbers (and several times slower than f32) where it does not.
    pub fn cpu_bf16() -> Self {
        Self {
            tensors: DType::F32,
            packed: Some(PackedType::Bf16),
            computes: DType::BF16,
        }
    }

    /// Why the plan differs from the request, when it does: for a log line.
    pub fn fallback_reason(&self, requested: DType, features: CpuFeatures) -> Option<String> {
        (self.computes != requested).then(|| {
            format!(
                "{requested:?} asked for, but this CPU ({}) has no native bf16 dot products \
                 (AVX512_BF16): running in {:?}",
                features.names(),
                self.computes
            )
            .to_lowercase()
        })
    }

    /// The kernel the CPU matmuls run on (on this CPU, see [`CpuFeatures::detected`]),
    /// for reports.
    pub fn kernel(&self) -> &'static str {
        match self.packed {
            Some(PackedType::Bf16) if CpuFeatures::detected().amx_tiles() => {
                "amx_bf16 (tdpbf16ps tiles), packed weights"
            }
            Some(PackedType::Bf16) => "avx512_bf16 (vdpbf16ps), packed weights",
            Some(PackedType::F32) => "avx512f, packed weights",
            None => "candle (gemm on the CPU)",
        }
    }
}

/// Elements per parallel work item: large enough to amortize scheduling.
const CHUNK: usize = 16 * 1024;

/// `exp(x)` for f32 by range reduction to `[-ln2/2, ln2/2]` and a degree-6 polynomial;
/// relative error below 2e-7 over the whole f32 range that does not overflow. Written
/// without branches or calls so that loops over it vectorize.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_7e-1
                    + r * (4.166_666_8e-2 + r * (8.333_452e-3 + r * 1.388_525_4e-3)))));
    let scale = f32::from_bits((((k as i32) + 127) as u32) << 23);
    p * scale
}

#[inline(always)]
fn quick_gelu_f32(x: f32) -> f32 {
    x / (1.0 + fast_exp(-1.702 * x))
}

struct QuickGeluInPlace;

impl InplaceOp1 for QuickGeluInPlace {
    fn name(&self) -> &'static str {
        "quick-gelu-inplace"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("quick_gelu needs contiguous input".into()))?;
        match storage {
            CpuStorage::F32(values) => {
                values[start..end].par_chunks_mut(CHUNK).for_each(|chunk| {
                    for v in chunk {
                        *v = quick_gelu_f32(*v);
                    }
                });
                Ok(())
            }
            _ => Err(candle_core::Error::Msg(
                "quick_gelu fast path takes f32 only".into(),
            )),
        }
    }
}

/// Below this many rows per thread, splitting the output columns across threads beats
/// the matmul library's own threading (measured on ViT-B/32 shapes: about twice as fast
/// at batch 1, where each linear layer has 50 rows).
const ROWS_PER_THREAD_FOR_COLUMN_SPLIT: usize = 128;

/// Raw pointers handed to the threads of one kernel call; each thread writes a disjoint
/// part of the output (its columns, or its sequence and head).
#[derive(Clone, Copy)]
struct SendPtr<T>(T);
// SAFETY: the pointers are only dereferenced inside the kernel calls that made them,
// whose threads read shared inputs and write disjoint parts of an output that stays
// borrowed until they are done.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T: Copy> SendPtr<T> {
    /// The pointer; a method, so that closures capture the `Send` wrapper whole.
    fn get(self) -> T {
        self.0
    }
}

/// `x [m, k] · w [k, n] (+ bias [n])`, row-major f32, into a new `[m, n]` buffer. The bias
/// is written first and the product accumulated onto it, so the bias costs no extra pass.
fn matmul_bias(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert!(x.len() == m * k && w.len() == k * n && bias.is_none_or(|b| b.len() == n));
    let mut out = match bias {
        Some(b) => b.repeat(m),
        None => vec![0f32; m * n],
    };
    let threads = candle_core::utils::get_num_threads().max(1);
    let read_dst = bias.is_some();
    let dst = SendPtr(out.as_mut_ptr());
    let lhs = SendPtr(x.as_ptr());
    let rhs = SendPtr(w.as_ptr());
    // Computes output columns `c0..c1` with the given threading inside the library.
    let block = |c0: usize, c1: usize, parallelism: gemm::Parallelism| {
        let (dst, lhs, rhs) = (dst, lhs, rhs);
        // SAFETY: `dst` holds m * n values and `rhs` k * n (checked above); columns
        // c0..c1 < n of both are addressed with row stride n, `lhs` with row stride k.
        // Concurrent calls get disjoint column ranges, so no output value is written
        // twice, and the inputs are only read.
        unsafe {
            gemm::gemm(
                m,
                c1 - c0,
                k,
                dst.0.add(c0),
                1,
                n as isize,
                read_dst,
                lhs.0,
                1,
                k as isize,
                rhs.0.add(c0),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    let few_rows = m < ROWS_PER_THREAD_FOR_COLUMN_SPLIT * threads;
    if threads > 1 && (few_rows || n <= k) && n >= 64 * threads {
        // Column blocks aligned to 16 values, one SIMD register of f32 on AVX-512.
        let per = n.div_ceil(threads).div_ceil(16) * 16;
        (0..threads).into_par_iter().for_each(|t| {
            let (c0, c1) = (t * per, ((t + 1) * per).min(n));
            if c0 < c1 {
                block(c0, c1, gemm::Parallelism::None);
            }
        });
    } else if threads > 1 {
        block(0, n, gemm::Parallelism::Rayon(threads));
    } else {
        block(0, n, gemm::Parallelism::None);
    }
    out
}

/// A linear layer on a flattened input: `x [m, k] · w_t [k, n] + bias`, then `quick_gelu`
/// when asked. On the CPU in f32 this is one matmul that accumulates onto the bias; other
/// devices and types go through candle.
pub(crate) fn linear(
    x: &Tensor,
    weight_t: &Tensor,
    bias: Option<&Tensor>,
    quick_gelu: bool,
) -> Result<Tensor> {
    let mut inputs = vec![x, weight_t];
    inputs.extend(bias);
    if fast_path(&inputs) {
        let (m, k) = x.dims2()?;
        let (k2, n) = weight_t.dims2()?;
        if k == k2 {
            // Read the storages where they are (read locks, no copies).
            let out = {
                let (x_storage, x_layout) = x.storage_and_layout();
                let (w_storage, w_layout) = weight_t.storage_and_layout();
                let xs = cpu_f32(&x_storage, x_layout)?;
                let ws = cpu_f32(&w_storage, w_layout)?;
                match bias {
                    Some(b) => {
                        let (b_storage, b_layout) = b.storage_and_layout();
                        let bs = cpu_f32(&b_storage, b_layout)?;
                        matmul_bias(xs, ws, Some(bs), m, k, n)
                    }
                    None => matmul_bias(xs, ws, None, m, k, n),
                }
            };
            let y = Tensor::from_vec(out, (m, n), x.device())?;
            return if quick_gelu {
                self::quick_gelu(y)
            } else {
                Ok(y)
            };
        }
    }
    let mut y = x.matmul(weight_t)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    if quick_gelu {
        self::quick_gelu(y)
    } else {
        Ok(y)
    }
}

/// A linear layer whose weight is packed for the CPU kernels, with its bias.
#[derive(Debug)]
pub(crate) struct PackedLinear {
    matrix: packed::PackedMatrix,
    bias: Option<Vec<f32>>,
}

impl PackedLinear {
    /// Packs `weight_t` (`[in, out]`) and keeps the bias (`[out]`) in f32.
    pub(crate) fn new(weight_t: &Tensor, bias: Option<&Tensor>, ty: PackedType) -> Result<Self> {
        let (k, n) = weight_t.dims2()?;
        let values = weight_t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != n) {
            return Err(candle_core::Error::Msg(format!("bias does not have {n} values")).into());
        }
        heap::keep_buffers();
        Ok(Self {
            matrix: packed::PackedMatrix::pack(&values, k, n, ty),
            bias,
        })
    }

    /// The layer's output width.
    pub(crate) fn out_features(&self) -> usize {
        self.matrix.n()
    }

    /// `x [m, in] · W + bias`, then `quick_gelu` when asked, then `+ residual [m, out]`,
    /// all before the one store of each output value.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        quick_gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        let n = self.matrix.n();
        if k != self.matrix.k() {
            return Err(candle_core::Error::Msg(format!(
                "linear layer takes {} inputs, got {k}",
                self.matrix.k()
            ))
            .into());
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let residual = residual
            .map(|r| -> Result<Tensor> {
                let r = r.to_dtype(DType::F32)?.contiguous()?;
                if r.dims() != [m, n] {
                    return Err(candle_core::Error::Msg(format!(
                        "residual is {:?}, the layer makes [{m}, {n}]",
                        r.dims()
                    ))
                    .into());
                }
                Ok(r)
            })
            .transpose()?;
        let out = {
            let (xs, xl) = x.storage_and_layout();
            let xs = cpu_f32(&xs, xl)?;
            let res_guard = residual.as_ref().map(|r| r.storage_and_layout());
            let res = match &res_guard {
                Some((storage, layout)) => Some(cpu_f32(storage, layout)?),
                None => None,
            };
            let epilogue = packed::Epilogue {
                bias: self.bias.as_deref(),
                quick_gelu,
                residual: res,
            };
            packed::matmul(xs, m, &self.matrix, epilogue, CpuFeatures::detected())
        };
        Ok(Tensor::from_vec(out, (m, n), x.device())?)
    }
}

/// Multi-head self-attention read straight out of the fused projection output.
///
/// `qkv` is `[batch, seq, 3 * hidden]` with the query, key and value of head `h` at
/// columns `h * head_dim` of their third, and the `1/sqrt(head_dim)` scale already in the
/// query. Every (sequence, head) pair is one work item: two small single-threaded
/// matmuls that read the strided projections in place and write the head's columns of
/// the `[batch, seq, hidden]` output, with the softmax in between. This replaces the
/// split, transpose and merge copies and the per-head library calls of the generic path.
/// Returns `None` when the fast path does not apply (not f32 on the CPU).
pub(crate) fn attention(qkv: &Tensor, heads: usize, causal: bool) -> Result<Option<Tensor>> {
    if !fast_path(&[qkv]) {
        return Ok(None);
    }
    let (b, t, three_d) = qkv.dims3()?;
    let d = three_d / 3;
    if three_d != 3 * d || heads == 0 || d % heads != 0 {
        return Ok(None);
    }
    let hd = d / heads;
    let features = CpuFeatures::detected();
    if features.avx512f {
        let out = {
            let (storage, layout) = qkv.storage_and_layout();
            let src = cpu_f32(&storage, layout)?;
            attention_packed(src, b, t, d, heads, causal, features)
        };
        return Ok(Some(Tensor::from_vec(out, (b, t, d), qkv.device())?));
    }
    let mut out = vec![0f32; b * t * d];
    {
        let (storage, layout) = qkv.storage_and_layout();
        let src = cpu_f32(&storage, layout)?;
        let src_ptr = SendPtr(src.as_ptr());
        let dst_ptr = SendPtr(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each_init(
            || vec![0f32; t * t],
            |scores, item| {
                let (bi, hi) = (item / heads, item % heads);
                let (src, dst) = (src_ptr, dst_ptr);
                let row = 3 * d;
                // SAFETY: `src` holds b * t * 3d values; the query, key and value of
                // (bi, hi) start inside row bi * t at column offsets hi * hd, d + hi * hd
                // and 2d + hi * hd, and span t rows of stride 3d and hd columns, all
                // within the buffer. `scores` is this thread's t x t scratch. The output
                // block (rows of sequence bi, columns hi * hd .. + hd, row stride d) is
                // written by this item only, so concurrent items never overlap.
                unsafe {
                    let base = src.0.add(bi * t * row + hi * hd);
                    gemm::gemm(
                        t,
                        t,
                        hd,
                        scores.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        base,
                        1,
                        row as isize,
                        base.add(d),
                        row as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    softmax_rows(scores, t, causal, CpuFeatures::none());
                    gemm::gemm(
                        t,
                        hd,
                        t,
                        dst.0.add(bi * t * d + hi * hd),
                        1,
                        d as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        t as isize,
                        base.add(2 * d),
                        1,
                        row as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
    }
    Ok(Some(Tensor::from_vec(out, (b, t, d), qkv.device())?))
}

/// Layer norm over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`
/// with mean and variance in f32, rows spread over the threads. `None` when the fast
/// path does not apply (not contiguous f32 on the CPU): candle's op does it then. At
/// batch 1 candle's op took 44 us for a 50 x 768 input, 4% of the vision tower.
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Option<Tensor>> {
    if !fast_path(&[x, weight, bias]) {
        return Ok(None);
    }
    let d = x.dim(candle_core::D::Minus1)?;
    if weight.elem_count() != d || bias.elem_count() != d || d == 0 {
        return Ok(None);
    }
    let out = {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (bs, bl) = bias.storage_and_layout();
        let (xs, ws, bs) = (cpu_f32(&xs, xl)?, cpu_f32(&ws, wl)?, cpu_f32(&bs, bl)?);
        let mut out = vec![0f32; xs.len()];
        let per_task = (CHUNK / d).max(1) * d;
        out.par_chunks_mut(per_task)
            .zip(xs.par_chunks(per_task))
            .for_each(|(out, xs)| {
                for (out, row) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    norm_row(row, ws, bs, eps as f32, out);
                }
            });
        out
    };
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

/// Sum of a row in 16 lanes (so that it vectorizes), then across them.
#[inline]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    lanes.iter().sum::<f32>() + tail
}

fn norm_row(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = x.len() as f32;
    let mean = lane_sum(x, |v| v) / d;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d;
    let scale = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * scale * w + b;
    }
}

/// [`attention`] on the AVX-512 microkernels: per (sequence, head), the keys packed as
/// the transposed right-hand side of `Q K^T` and the values as that of `P V`, both read
/// from the fused projection; the query and the probabilities are read in place.
fn attention_packed(
    src: &[f32],
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
    causal: bool,
    features: CpuFeatures,
) -> Vec<f32> {
    let hd = d / heads;
    let row = 3 * d;
    assert!(src.len() == b * t * row, "qkv is not [b, t, 3d]");
    // Not zeroed first: the items together store every value once.
    let mut out: Vec<f32> = Vec::with_capacity(b * t * d);
    let dst_ptr = SendPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    struct Scratch {
        scores: Vec<f32>,
        keys: Vec<packed::Line>,
        values: Vec<packed::Line>,
    }
    let scratch = || Scratch {
        scores: vec![0f32; t * t],
        keys: Vec::new(),
        values: Vec::new(),
    };
    let one = |s: &mut Scratch, item: usize| {
        let (bi, hi) = (item / heads, item % heads);
        let seq = &src[bi * t * row..(bi + 1) * t * row];
        let q0 = hi * hd;
        let (k0, v0) = (d + q0, 2 * d + q0);
        // K^T [hd, t] and V [t, hd].
        packed::pack_f32_transposed(&mut s.keys, hd, t, |j| {
            &seq[j * row + k0..j * row + k0 + hd]
        });
        packed::pack_f32_rows(&mut s.values, t, hd, |j| {
            &seq[j * row + v0..j * row + v0 + hd]
        });
        // SAFETY: the query block (t rows of stride 3d, hd values from column q0)
        // lies in `seq`; `scores` is t x t; the packed operands were sized for these
        // shapes just above. The output block (rows of sequence bi, columns
        // q0..q0 + hd, stride d) lies in `out` and is written by this item only.
        unsafe {
            packed::gemm_f32(
                seq.as_ptr().add(q0),
                row,
                t,
                &s.keys,
                hd,
                t,
                s.scores.as_mut_ptr(),
                t,
                features,
            );
            softmax_rows(&mut s.scores, t, causal, features);
            packed::gemm_f32(
                s.scores.as_ptr(),
                t,
                t,
                &s.values,
                t,
                hd,
                dst_ptr.get().add(bi * t * d + q0),
                d,
                features,
            );
        }
    };
    (0..b * heads)
        .into_par_iter()
        .for_each_init(scratch, |s, item| one(s, item));
    // SAFETY: the b * heads items store the rows of their sequence at their head's hd
    // columns: together every one of the b * t * d values.
    unsafe { out.set_len(b * t * d) };
    out
}

/// Softmax of each row of a `t x t` matrix in place; with `causal`, row `i` only over
/// columns `0..=i` and zero after (the masked scores never enter the sum).
fn softmax_rows(scores: &mut [f32], t: usize, causal: bool, features: CpuFeatures) {
    for (i, row) in scores.chunks_exact_mut(t).enumerate() {
        let live = if causal { i + 1 } else { t };
        let (row, masked) = row.split_at_mut(live);
        masked.fill(0.0);
        if microkernel::softmax_row(row, features) {
            continue;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = fast_exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &Layout) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => Ok(contiguous_f32(cpu, layout)?),
        _ => Err(candle_core::Error::Msg("expected a CPU tensor".into()).into()),
    }
}

/// Whether the fused in-place kernels apply: contiguous f32 tensors on the CPU.
fn fast_path(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.is_contiguous())
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => Err(candle_core::Error::Msg(
            "fused kernel needs contiguous f32".into(),
        )),
    }
}

fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&mut v[start..end]),
        _ => Err(candle_core::Error::Msg(
            "fused kernel needs contiguous f32".into(),
        )),
    }
}

/// `a += b` element-wise for tensors of one shape.
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add-inplace"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let b = contiguous_f32(s2, l2)?;
        let a = contiguous_f32_mut(s1, l1)?;
        if a.len() != b.len() {
            return Err(candle_core::Error::Msg(
                "add_inplace: lengths differ".into(),
            ));
        }
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .for_each(|(a, b)| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            });
        Ok(())
    }
}

/// `a + b` for tensors of one shape; `a` must be a tensor nothing else shares.
pub(crate) fn add(a: Tensor, b: &Tensor) -> Result<Tensor> {
    if fast_path(&[&a, b]) && a.dims() == b.dims() {
        a.inplace_op2(b, &AddInPlace)?;
        return Ok(a);
    }
    Ok((a + b)?)
}

/// `x * sigmoid(1.702 x)`, in place on contiguous f32 CPU tensors (which the caller must
/// own exclusively), through candle's ops elsewhere.
pub(crate) fn quick_gelu(x: Tensor) -> Result<Tensor> {
    if fast_path(&[&x]) {
        x.inplace_op1(&QuickGeluInPlace)?;
        Ok(x)
    } else {
        Ok((&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = f64::from(x).exp();
            let rel = ((f64::from(fast_exp(x)) - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.001_7;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.3));
        assert!(fast_exp(1000.0).is_finite());
    }

    #[test]
    fn quick_gelu_matches_the_definition() -> Result<()> {
        let values: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.01).collect();
        let x = Tensor::from_vec(values.clone(), (40, 100), &Device::Cpu)?;
        let fast = quick_gelu(x.copy()?)?.flatten_all()?.to_vec1::<f32>()?;
        for (v, f) in values.iter().zip(fast) {
            let exact = f64::from(*v) / (1.0 + (-1.702 * f64::from(*v)).exp());
            assert!(
                (f64::from(f) - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                "{v}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_linear_and_residual_match_candle() -> Result<()> {
        // Shapes on both sides of the column-split threshold, with and without bias.
        for (m, k, n) in [(37, 129, 200), (300, 64, 96), (5, 7, 3)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
            let bias = Tensor::randn(0f32, 1.0, n, &Device::Cpu)?;
            let want = x.matmul(&w)?.broadcast_add(&bias)?;
            let got = linear(&x, &w, Some(&bias), false)?;
            let diff = (&got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{m}x{k}x{n}: {diff}");
            let got = linear(&x, &w, None, true)?;
            let want = quick_gelu(x.matmul(&w)?)?;
            let diff = (&got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{m}x{k}x{n} quick_gelu: {diff}");
        }
        let a = Tensor::randn(0f32, 1.0, (33, 17), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (33, 17), &Device::Cpu)?;
        let got = add(a.copy()?, &b)?;
        assert_eq!(got.to_vec2::<f32>()?, (&a + &b)?.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn vector_softmax_matches_the_scalar_one() {
        let cpu = CpuFeatures::detected();
        for t in [1, 15, 16, 17, 50, 77] {
            for causal in [false, true] {
                let scores: Vec<f32> = (0..t * t)
                    .map(|i| ((i * 37) % 101) as f32 * 0.13 - 6.0)
                    .collect();
                let mut plain = scores.clone();
                let mut fast = scores;
                softmax_rows(&mut plain, t, causal, CpuFeatures::none());
                softmax_rows(&mut fast, t, causal, cpu);
                for (i, (p, f)) in plain.iter().zip(&fast).enumerate() {
                    assert!(
                        (p - f).abs() <= 1e-6,
                        "t {t} causal {causal} at {i}: {p} vs {f}"
                    );
                }
                for row in plain.chunks(t) {
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "{sum}");
                }
            }
        }
    }

    #[test]
    fn fused_attention_matches_the_generic_path() -> Result<()> {
        let (b, t, heads, hd) = (3, 11, 4, 8);
        let d = heads * hd;
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * d), &Device::Cpu)?;
        for causal in [false, true] {
            let fast = attention(&qkv, heads, causal)?.expect("fast path applies");
            let parts = qkv
                .reshape((b, t, 3, heads, hd))?
                .permute((2, 0, 3, 1, 4))?;
            let (q, k, v) = (
                parts.get(0)?.contiguous()?,
                parts.get(1)?.contiguous()?,
                parts.get(2)?.contiguous()?,
            );
            let mut scores = q.matmul(&k.t()?)?;
            if causal {
                let mask: Vec<f32> = (0..t)
                    .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                scores = scores.broadcast_add(&Tensor::from_vec(mask, (t, t), &Device::Cpu)?)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let want = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, d))?;
            let diff = (&fast - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "causal {causal}: {diff}");
        }
        Ok(())
    }
}
