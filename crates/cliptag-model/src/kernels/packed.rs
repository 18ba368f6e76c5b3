//! Linear layers on weights packed once at load into the microkernels' panel layout.
//!
//! The weight `[k, n]` is cut into panels of [`NR`] output columns; inside a panel, each
//! step along `k` is one 128-byte line of [`NR`] values, so the microkernel reads the
//! panel front to back with two aligned 64-byte loads per step. In f32 a step is one row
//! of `k`; in bf16 it is two, stored as pairs (the even row in the low half of each
//! 32-bit word), which is the operand `vdpbf16ps` multiplies. The input is read in place
//! (f32) or converted once per call to rows of bf16 pairs; either way it is `[m, steps]`
//! 32-bit words, broadcast one word at a time.
//!
//! The work is blocked as oneDNN and MLAS do it: rows in blocks of [`MC`] (the input's
//! block stays in L2 while every panel passes over it), each panel's lines reused by
//! every tile of the block, the output columns split across threads (whatever the batch:
//! at batch 1 a linear layer has only 50 rows). Bias, `quick_gelu` and the residual are
//! applied to the accumulators before the one store of each output value.

use rayon::prelude::*;

use super::SendPtr;
use super::isa::CpuFeatures;
use super::microkernel::{self, Tile};

/// Output columns per panel: two AVX-512 registers of f32.
pub(crate) const NR: usize = 32;
/// Rows per microkernel call (ViT sequences are 50 positions: five calls, no remainder).
pub(crate) const MR: usize = 10;
/// Rows per block: 120 rows of ViT-B/32's 768-wide input are 180 KiB in bf16.
const MC: usize = 12 * MR;

/// The number type of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedType {
    /// f32 values, one `k` row per step.
    F32,
    /// bf16 pairs, two `k` rows per step; products accumulate in f32.
    Bf16,
}

impl PackedType {
    /// `k` rows per step.
    fn rows_per_step(self) -> usize {
        match self {
            PackedType::F32 => 1,
            PackedType::Bf16 => 2,
        }
    }
}

/// One step of one panel: `NR` 32-bit words, aligned for whole-line loads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u32; NR]);

/// A `[k, n]` weight in panel layout, zero-padded to whole panels and steps.
pub(crate) struct PackedMatrix {
    ty: PackedType,
    k: usize,
    n: usize,
    steps: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("ty", &self.ty)
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

/// f32 to bf16, rounding to nearest even as `vcvtne2ps2bf16` does; NaN stays NaN.
#[inline]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// The f32 a bf16 stands for.
#[inline]
pub(crate) fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

impl PackedMatrix {
    /// Packs a row-major `[k, n]` matrix.
    pub(crate) fn pack(w: &[f32], k: usize, n: usize, ty: PackedType) -> Self {
        assert_eq!(w.len(), k * n, "weight is not [k, n]");
        let per = ty.rows_per_step();
        let steps = k.div_ceil(per);
        let panels = n.div_ceil(NR);
        let mut lines = vec![Line([0; NR]); panels * steps];
        lines
            .par_chunks_mut(steps)
            .enumerate()
            .for_each(|(panel, panel_lines)| {
                let c0 = panel * NR;
                let cols = NR.min(n - c0);
                for (s, line) in panel_lines.iter_mut().enumerate() {
                    for (j, word) in line.0[..cols].iter_mut().enumerate() {
                        let at = |row: usize| {
                            if row < k { w[row * n + c0 + j] } else { 0.0 }
                        };
                        *word = match ty {
                            PackedType::F32 => at(s).to_bits(),
                            PackedType::Bf16 => {
                                u32::from(bf16_bits(at(2 * s)))
                                    | (u32::from(bf16_bits(at(2 * s + 1))) << 16)
                            }
                        };
                    }
                }
            });
        Self {
            ty,
            k,
            n,
            steps,
            lines,
        }
    }

    /// Rows of the unpacked matrix (the layer's input width).
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Columns of the unpacked matrix (the layer's output width).
    pub(crate) fn n(&self) -> usize {
        self.n
    }
}

/// What the store of each output value adds to the product.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Per output column, at least `n` values.
    pub bias: Option<&'a [f32]>,
    /// `x * sigmoid(1.702 x)` after the bias.
    pub quick_gelu: bool,
    /// `[m, n]`, added last.
    pub residual: Option<&'a [f32]>,
}

/// `x [m, k] · w + epilogue` into a new row-major `[m, n]`, on the widest kernel
/// `features` allows for the matrix's type.
pub(crate) fn matmul(
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    epilogue: Epilogue<'_>,
    features: CpuFeatures,
) -> Vec<f32> {
    let (k, n, steps) = (w.k, w.n, w.steps);
    assert_eq!(x.len(), m * k, "input is not [m, k]");
    assert!(epilogue.bias.is_none_or(|b| b.len() >= n), "bias too short");
    assert!(
        epilogue.residual.is_none_or(|r| r.len() == m * n),
        "residual is not [m, n]"
    );
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // Not zeroed first: the tiles store every value once, and zeroing a buffer that
    // comes back from the heap (the usual case, see `heap`) is a pass over all of it.
    let out: Vec<f32> = Vec::with_capacity(m * n);
    // The input as `[m, steps]` words: in place for f32, as bf16 pairs otherwise.
    match w.ty {
        PackedType::F32 => run(bytemuck_f32(x), m, w, epilogue, features, out),
        PackedType::Bf16 => PAIRS.with(|pairs| match pairs.try_borrow_mut() {
            Ok(mut pairs) => {
                let a = to_bf16_pairs(x, m, k, steps, features, &mut pairs);
                run(a, m, w, epilogue, features, out)
            }
            // Only if a matmul ran inside another on this thread: a buffer of its own.
            Err(_) => {
                let mut pairs = Vec::new();
                let a = to_bf16_pairs(x, m, k, steps, features, &mut pairs);
                run(a, m, w, epilogue, features, out)
            }
        }),
    }
}

thread_local! {
    /// The bf16 pairs of the inputs of this thread's matmuls: kept between calls (at the
    /// largest input's size, 10 MB for a 32-image ViT-B/32 batch) so that no call
    /// allocates or zeroes it again.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`matmul`] on its input as `[m, steps]` words, into `out` (allocated, not
/// initialized).
fn run(
    a: &[u32],
    m: usize,
    w: &PackedMatrix,
    epilogue: Epilogue<'_>,
    features: CpuFeatures,
    mut out: Vec<f32>,
) -> Vec<f32> {
    let (n, steps) = (w.n, w.steps);
    assert!(a.len() >= m * steps && out.capacity() >= m * n);
    let kernel = microkernel::select(w.ty, features);
    let panels = n.div_ceil(NR);
    let threads = candle_core::utils::get_num_threads().clamp(1, panels);
    let per = panels.div_ceil(threads);
    let dst = SendPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    (0..threads).into_par_iter().for_each(|t| {
        let (p0, p1) = (t * per, ((t + 1) * per).min(panels));
        for r0 in (0..m).step_by(MC) {
            let r1 = (r0 + MC).min(m);
            // SAFETY: rows r0..r1 < m of `a` ([m, steps]) and of the [m, n] output and
            // residual, panels p0..p1 < panels of `w`; this thread alone writes the
            // columns of panels p0..p1.
            unsafe {
                run_tiles(
                    kernel,
                    a.as_ptr().add(r0 * steps),
                    steps,
                    r1 - r0,
                    w.lines.as_ptr(),
                    steps,
                    p0..p1,
                    n,
                    dst.get().add(r0 * n),
                    n,
                    epilogue.bias,
                    epilogue.quick_gelu,
                    epilogue.residual.map(|res| res.as_ptr().add(r0 * n)),
                );
            }
        }
    });
    // SAFETY: the threads' panel ranges cover columns 0..n and each thread's row blocks
    // rows 0..m, and every tile stores all of its rows and columns: all m * n values are
    // initialized.
    unsafe { out.set_len(m * n) };
    out
}

/// Every tile of `rows` rows and the panels `panels` of a packed matrix with `steps`
/// steps: panel by panel, so that a panel's lines stay in cache while the rows' tiles
/// pass over them; each tile runs all the steps, so each output value is stored once
/// (splitting the steps into blocks made every block load and store the output again,
/// which cost more at batch 32 than the panel's lines missing L1).
///
/// # Safety
/// `a` addresses `rows` rows of `steps` words with row stride `lda`; `lines` the
/// `[panels, steps]` lines of the matrix; `c` (and `residual`) `rows` rows with row
/// stride `ldc` and the columns of `panels` (below `n`); `bias` at least `n` values.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles(
    kernel: microkernel::Kernel,
    a: *const u32,
    lda: usize,
    rows: usize,
    lines: *const Line,
    steps: usize,
    panels: std::ops::Range<usize>,
    n: usize,
    c: *mut f32,
    ldc: usize,
    bias: Option<&[f32]>,
    quick_gelu: bool,
    residual: Option<*const f32>,
) {
    for panel in panels {
        let c0 = panel * NR;
        let cols = NR.min(n - c0);
        for r in (0..rows).step_by(MR) {
            // SAFETY: row r < rows, column c0 < n and the panel's lines are inside the
            // buffers (the caller's contract); the kernel stays within the tile.
            unsafe {
                let tile = Tile {
                    rows: MR.min(rows - r),
                    cols,
                    steps,
                    a: a.add(r * lda),
                    lda,
                    b: lines.add(panel * steps),
                    c: c.add(r * ldc + c0),
                    ldc,
                    bias: bias.map(|b| b.as_ptr().add(c0)),
                    quick_gelu,
                    residual: residual.map(|res| res.add(r * ldc + c0)),
                };
                kernel(&tile);
            }
        }
    }
}

/// Lines for a small `[k, n]` f32 matrix whose row `i` is `row(i)` (`n` values), into a
/// reused buffer: attention's values, packed per sequence and head.
pub(crate) fn pack_f32_rows<'a>(
    lines: &mut Vec<Line>,
    k: usize,
    n: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    let panels = n.div_ceil(NR);
    lines.clear();
    lines.resize(panels * k, Line([0; NR]));
    for i in 0..k {
        let values = &row(i)[..n];
        for (panel, chunk) in values.chunks(NR).enumerate() {
            for (word, &v) in lines[panel * k + i].0.iter_mut().zip(chunk) {
                *word = v.to_bits();
            }
        }
    }
}

/// Lines for a small `[k, n]` f32 matrix given transposed: column `j` is `column(j)`
/// (`k` values), as attention's keys are for `Q K^T`. Reads each column once, in order,
/// and scatters it over `k` lines that stay in L1 (gathering each line from `NR`
/// columns instead took longer than the two matmuls).
pub(crate) fn pack_f32_transposed<'a>(
    lines: &mut Vec<Line>,
    k: usize,
    n: usize,
    column: impl Fn(usize) -> &'a [f32],
) {
    let panels = n.div_ceil(NR);
    lines.clear();
    lines.resize(panels * k, Line([0; NR]));
    for j in 0..n {
        let (panel, lane) = (j / NR, j % NR);
        let panel_lines = &mut lines[panel * k..(panel + 1) * k];
        for (line, &v) in panel_lines.iter_mut().zip(&column(j)[..k]) {
            line.0[lane] = v.to_bits();
        }
    }
}

/// `c = a · b` in f32 on the calling thread: `a` is `m` rows of `k` values with row
/// stride `lda`, `b` a `[k, n]` matrix packed by [`pack_f32_rows`] or
/// [`pack_f32_transposed`], `c` `m` rows with
/// row stride `ldc` of which the first `n` columns are written.
///
/// # Safety
/// `a` addresses `m` rows of `k` values at stride `lda`, `c` `m` rows of `n` values at
/// stride `ldc`, and `lines` holds `n.div_ceil(NR) * k` lines.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    a: *const f32,
    lda: usize,
    m: usize,
    lines: &[Line],
    k: usize,
    n: usize,
    c: *mut f32,
    ldc: usize,
    features: CpuFeatures,
) {
    let panels = n.div_ceil(NR);
    assert!(lines.len() >= panels * k, "packed operand too short");
    // SAFETY: the caller's contract.
    unsafe {
        run_tiles(
            microkernel::select(PackedType::F32, features),
            a.cast::<u32>(),
            lda,
            m,
            lines.as_ptr(),
            k,
            0..panels,
            n,
            c,
            ldc,
            None,
            false,
            None,
        );
    }
}

/// The bits of f32 values, without a copy.
fn bytemuck_f32(x: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment and every bit pattern is a
    // valid u32.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u32>(), x.len()) }
}

/// `[m, k]` f32 -> `[m, steps]` words of bf16 pairs (the odd tail padded with zero) in
/// the front of `buffer`, which only grows: a smaller call leaves the rest as it is, so
/// that a larger one later does not zero it again.
fn to_bf16_pairs<'a>(
    x: &[f32],
    m: usize,
    k: usize,
    steps: usize,
    features: CpuFeatures,
    buffer: &'a mut Vec<u32>,
) -> &'a [u32] {
    if buffer.len() < m * steps {
        buffer.resize(m * steps, 0);
    }
    let out = &mut buffer[..m * steps];
    // Every word is written here.
    out.par_chunks_mut(steps)
        .zip(x.par_chunks(k))
        .for_each(|(dst, src)| microkernel::convert_row_bf16(src, dst, features));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reference: f64 sums of the products of the values as the packed type
    /// stores them, then the epilogue.
    fn reference(
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ty: PackedType,
        epilogue: Epilogue<'_>,
    ) -> Vec<f32> {
        let q = |v: f32| match ty {
            PackedType::F32 => v,
            PackedType::Bf16 => bf16_value(bf16_bits(v)),
        };
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for l in 0..k {
                    sum += f64::from(q(x[i * k + l])) * f64::from(q(w[l * n + j]));
                }
                let mut v = sum as f32 + epilogue.bias.map_or(0.0, |b| b[j]);
                if epilogue.quick_gelu {
                    v = (f64::from(v) / (1.0 + (-1.702 * f64::from(v)).exp())) as f32;
                }
                out[i * n + j] = v + epilogue.residual.map_or(0.0, |r| r[i * n + j]);
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic and spread over [-1, 1).
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn check(ty: PackedType, features: CpuFeatures) {
        // Rows, inner size and columns that are not multiples of MR, of a step pair,
        // or of NR, next to exact multiples, and more rows than one block (MC).
        let shapes = [
            (1, 1, 1),
            (3, 7, 5),
            (10, 64, 32),
            (11, 33, 65),
            (23, 515, 97),
            (50, 96, 64),
            (131, 129, 31),
        ];
        for (m, k, n) in shapes {
            let x = values(m * k, (m * 31 + k) as u32);
            let w = values(k * n, (k * 17 + n) as u32);
            let bias = values(n, 7);
            let residual = values(m * n, 9);
            let packed = PackedMatrix::pack(&w, k, n, ty);
            for (use_bias, gelu, use_res) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, false, true),
            ] {
                let epilogue = Epilogue {
                    bias: use_bias.then_some(&bias[..]),
                    quick_gelu: gelu,
                    residual: use_res.then_some(&residual[..]),
                };
                let got = matmul(&x, m, &packed, epilogue, features);
                let want = reference(&x, &w, m, k, n, ty, epilogue);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    // f32 sums in another order than the f64 reference: a few ulps
                    // of the sum of magnitudes.
                    let tol = 2e-6 * (k as f32) + 1e-5;
                    assert!(
                        (g - e).abs() <= tol,
                        "{ty:?} {}: {m}x{k}x{n} bias {use_bias} gelu {gelu} residual {use_res} \
                         at {i}: {g} vs {e}",
                        features.names(),
                    );
                }
            }
        }
    }

    #[test]
    fn portable_kernels_match_the_reference() {
        check(PackedType::F32, CpuFeatures::none());
        check(PackedType::Bf16, CpuFeatures::none());
    }

    #[test]
    fn native_kernels_match_the_reference() {
        let cpu = CpuFeatures::detected();
        if !cpu.avx512f {
            eprintln!("no AVX-512 on this CPU: the portable kernels were checked instead");
        }
        check(PackedType::F32, cpu);
        check(PackedType::Bf16, cpu);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
    }
}
