//! Linear layers on weights packed once at load into the microkernels' panel layout.
//!
//! The weight `[k, n]` is cut into panels of [`NR`] output columns; inside a panel, each
//! step along `k` is one 128-byte line of [`NR`] values, so the microkernel reads the
//! panel front to back with two aligned 64-byte loads per step. In f32 a step is one row
//! of `k`; in bf16 it is two, stored as pairs (the even row in the low half of each
//! 32-bit word), which is the operand `vdpbf16ps` multiplies and, 16 steps at a time,
//! an AMX weight tile; bf16 matrices are zero-padded to a multiple of 16 steps for those
//! tiles. The input is read in place (f32) or converted once per call to rows of bf16
//! pairs; either way it is `[m, steps]` 32-bit words, broadcast one word at a time (or
//! loaded 16 rows by 16 words as a tile).
//!
//! The work is blocked as oneDNN and MLAS do it: rows in blocks of 120 (128 on AMX; the
//! input's block stays in L2 while every panel passes over it), each panel's lines reused
//! by every tile of the block, each block's output columns split into a few jobs per
//! thread (whatever the batch: at batch 1 a linear layer has only 50 rows). Bias, `quick_gelu` and the residual are
//! applied to the accumulators before the one store of each output value.

use rayon::prelude::*;

use super::SendPtr;
use super::isa::CpuFeatures;
use super::microkernel::{self, Microkernel, Tile};

/// Output columns per panel: two AVX-512 registers of f32.
pub(crate) const NR: usize = 32;
/// Rows per register-tile call (ViT sequences are 50 positions: five calls, no
/// remainder).
pub(crate) const MR: usize = 10;
/// Jobs a thread of a matmul's row block: measured on a 2-core VM whose cores ran at
/// different speeds from minute to minute, 4 beat 1 and 2 by 5 to 20% at batch 32.
const JOBS_PER_THREAD: usize = 4;
/// bf16 matrices have a multiple of this many steps: whole AMX tiles.
const BF16_STEPS: usize = 16;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(BF16_STEPS.is_multiple_of(super::amx::STEPS));

/// The number type of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedType {
    /// f32 values, one `k` row per step.
    F32,
    /// bf16 pairs, two `k` rows per step; products accumulate in f32.
    Bf16,
}

impl PackedType {
    /// Steps of a matrix with `k` rows.
    fn steps(self, k: usize) -> usize {
        match self {
            PackedType::F32 => k,
            PackedType::Bf16 => k.div_ceil(2).next_multiple_of(BF16_STEPS),
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
        let steps = ty.steps(k);
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
    let kernel = microkernel::select(w.ty, features);
    // The input as `[m, steps]` words: in place for f32, as bf16 pairs otherwise (with
    // whole tiles of rows for AMX).
    match w.ty {
        PackedType::F32 => run(bytemuck_f32(x), m, w, epilogue, kernel, out),
        PackedType::Bf16 => {
            let rows = kernel.input_rows(m);
            PAIRS.with(|pairs| match pairs.try_borrow_mut() {
                Ok(mut pairs) => {
                    let a = to_bf16_pairs(x, m, rows, k, steps, features, &mut pairs);
                    run(a, m, w, epilogue, kernel, out)
                }
                // Only if a matmul ran inside another on this thread: a buffer of its own.
                Err(_) => {
                    let mut pairs = Vec::new();
                    let a = to_bf16_pairs(x, m, rows, k, steps, features, &mut pairs);
                    run(a, m, w, epilogue, kernel, out)
                }
            })
        }
    }
}

thread_local! {
    /// The bf16 pairs of the inputs of this thread's matmuls: kept between calls (at the
    /// largest input's size, 10 MB for a 32-image ViT-B/32 batch) so that no call
    /// allocates or zeroes it again.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`matmul`] on its input as `[m, steps]` words (whole tiles of rows for a tile
/// kernel), into `out` (allocated, not initialized).
fn run(
    a: &[u32],
    m: usize,
    w: &PackedMatrix,
    epilogue: Epilogue<'_>,
    kernel: Microkernel,
    mut out: Vec<f32>,
) -> Vec<f32> {
    let (n, steps) = (w.n, w.steps);
    let rows = kernel.input_rows(m);
    assert!(a.len() >= rows * steps && out.capacity() >= m * n);
    let panels = n.div_ceil(NR);
    let threads = candle_core::utils::get_num_threads().clamp(1, panels);
    // Several jobs a thread, taken as threads come free: a core slowed by a busy sibling
    // or another tenant's load does less of the work instead of holding the others up.
    let jobs = (threads * JOBS_PER_THREAD).min(panels);
    let per = panels.div_ceil(jobs);
    let dst = SendPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    // Row block by row block, so that every job of a block finds its rows in cache.
    for r0 in (0..m).step_by(kernel.block_rows) {
        let r1 = (r0 + kernel.block_rows).min(m);
        (0..panels.div_ceil(per)).into_par_iter().for_each(|job| {
            let (p0, p1) = (job * per, ((job + 1) * per).min(panels));
            // SAFETY: `select` picks a tile kernel only where the CPU can run it.
            #[cfg(target_arch = "x86_64")]
            let _tiles = kernel.tiles.then(|| unsafe { super::amx::configure() });
            // SAFETY: rows r0..r1 < m of `a` ([m, steps]) and of the [m, n] output and
            // residual, panels p0..p1 < panels of `w`; this job alone writes the columns
            // of panels p0..p1 in these rows.
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
        });
    }
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
    kernel: Microkernel,
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
        for r in (0..rows).step_by(kernel.rows) {
            // SAFETY: row r < rows, column c0 < n and the panel's lines are inside the
            // buffers (the caller's contract); the kernel stays within the tile.
            unsafe {
                let tile = Tile {
                    rows: kernel.rows.min(rows - r),
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
                (kernel.run)(&tile);
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

/// `[m, k]` f32 -> `[m, steps]` words of bf16 pairs (zero past `k`) in the front of
/// `buffer`, which holds at least `rows >= m` rows after: the rows past `m` are left as
/// they are (a tile kernel reads them and drops what it makes of them). The buffer only
/// grows, so that a larger call later does not zero it again.
fn to_bf16_pairs<'a>(
    x: &[f32],
    m: usize,
    rows: usize,
    k: usize,
    steps: usize,
    features: CpuFeatures,
    buffer: &'a mut Vec<u32>,
) -> &'a [u32] {
    debug_assert!(rows >= m && steps >= k.div_ceil(2));
    if buffer.len() < rows * steps {
        buffer.resize(rows * steps, 0);
    }
    // Every word of the first m rows is written here.
    buffer[..m * steps]
        .par_chunks_mut(steps)
        .zip(x.par_chunks(k))
        .for_each(|(dst, src)| {
            let (pairs, padding) = dst.split_at_mut(k.div_ceil(2));
            microkernel::convert_row_bf16(src, pairs, features);
            padding.fill(0);
        });
    &buffer[..rows * steps]
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
        // Rows, inner size and columns that are not multiples of the kernels' rows (10,
        // or 16 and 32 on AMX), of a step pair or a tile's 16 steps, or of NR, next to
        // exact multiples, and more rows than one block (120 or 128). The larger shapes
        // come first, so that smaller ones reuse a converted input with stale rows.
        let shapes = [
            (160, 64, 40),
            (131, 129, 31),
            (1, 1, 1),
            (3, 7, 5),
            (10, 64, 32),
            (11, 33, 65),
            (16, 32, 32),
            (23, 515, 97),
            (47, 40, 33),
            (50, 96, 64),
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
        if !cpu.amx_tiles() {
            eprintln!(
                "no AMX tiles on this CPU ({}): their kernel was not run",
                cpu.names()
            );
        }
        // Each level this CPU has: AVX-512 f32 (with bf16 on portable code), then bf16
        // dot products, then AMX tiles.
        for cap in ["avx512", "avx512_bf16", ""] {
            check(PackedType::F32, cpu.capped(cap));
            check(PackedType::Bf16, cpu.capped(cap));
        }
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
