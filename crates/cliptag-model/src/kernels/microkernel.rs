//! The innermost loops of the packed matmul: one tile of at most `MR` rows and `NR`
//! columns over a block of steps, with its accumulators in registers.
//!
//! Each tile has an AVX-512 kernel (f32 fused multiply-adds; bf16 pairs through
//! `vdpbf16ps`) and a portable one with the same meaning, which is also what runs on CPUs
//! without the extension; bf16 has a third on AMX tiles (`amx`), with larger tiles.
//! Rows and columns past the tile's edge are never written, and in the register kernels
//! never read: the row count picks a kernel instantiated for it, and column edges use
//! masked loads and stores.

use super::isa::CpuFeatures;
use super::packed::{Line, MR, NR, PackedType, bf16_bits, bf16_value};

/// One microkernel call. Pointers are to the tile's first element of each operand.
pub(crate) struct Tile {
    /// Rows of the tile, from 1 to the kernel's [`Microkernel::rows`].
    pub rows: usize,
    /// Output columns of the tile, `1..=NR`.
    pub cols: usize,
    /// Steps of the block (`k` rows in f32, pairs of them in bf16).
    pub steps: usize,
    /// The input as 32-bit words (f32 or a bf16 pair), row stride `lda`.
    pub a: *const u32,
    pub lda: usize,
    /// The panel's lines for this block.
    pub b: *const Line,
    /// The output, row stride `ldc`.
    pub c: *mut f32,
    pub ldc: usize,
    /// The tile's columns of the bias, the accumulators' start (else zero).
    pub bias: Option<*const f32>,
    /// `x * sigmoid(1.702 x)` on the sums, before the residual.
    pub quick_gelu: bool,
    /// The tile's corner in the residual, row stride `ldc`, added last.
    pub residual: Option<*const f32>,
}

/// A microkernel. Safety: every pointer of the tile must address the rows, columns and
/// steps it names.
pub(crate) type Kernel = unsafe fn(&Tile);

/// A kernel and the shape of the work it takes.
#[derive(Clone, Copy)]
pub(crate) struct Microkernel {
    pub run: Kernel,
    /// Rows of one call.
    pub rows: usize,
    /// Rows of the input's block that stays in L2 while every panel passes over it.
    pub block_rows: usize,
    /// Runs on AMX tiles: the thread configures them first, and the input has whole
    /// tiles of rows and steps (see `amx`).
    pub tiles: bool,
}

impl Microkernel {
    /// A register-tile kernel: [`MR`] rows a call, blocks of 120 rows (of ViT-B/32's
    /// 768-wide input, 180 KiB in bf16).
    const fn registers(run: Kernel) -> Self {
        Self {
            run,
            rows: MR,
            block_rows: 12 * MR,
            tiles: false,
        }
    }

    /// Rows of input a call on `m` rows reads: whole tiles of 16 on AMX (the rows past
    /// `m` are computed and dropped), exactly `m` otherwise.
    pub fn input_rows(&self, m: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.tiles {
            return m.next_multiple_of(super::amx::ROWS);
        }
        m
    }
}

/// The widest kernel the CPU runs for a number type.
pub(crate) fn select(ty: PackedType, features: CpuFeatures) -> Microkernel {
    match ty {
        #[cfg(target_arch = "x86_64")]
        PackedType::F32 if features.avx512f => Microkernel::registers(avx512::f32_tile),
        #[cfg(target_arch = "x86_64")]
        PackedType::Bf16 if features.amx_tiles() => Microkernel {
            run: super::amx::bf16_tile,
            rows: super::amx::MR,
            // Four calls: 128 rows, 192 KiB of a 768-wide input.
            block_rows: 4 * super::amx::MR,
            tiles: true,
        },
        #[cfg(target_arch = "x86_64")]
        PackedType::Bf16 if features.native_bf16() => Microkernel::registers(avx512::bf16_tile),
        PackedType::F32 => Microkernel::registers(portable_f32_tile),
        PackedType::Bf16 => Microkernel::registers(portable_bf16_tile),
    }
}

/// The epilogue of a kernel that leaves its sums in memory: row-major, `ld` apart, bias
/// not yet added. Adds the bias, applies `quick_gelu` and the residual as the tile asks,
/// and stores the tile's rows and columns.
///
/// # Safety
/// As [`Kernel`] for the output; `sums` addresses `t.rows` rows of `t.cols` values at
/// stride `ld`; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn store_sums(t: &Tile, sums: *const f32, ld: usize) {
    // SAFETY: forwarded.
    unsafe { avx512::store_sums(t, sums, ld) }
}

/// One row of f32 as bf16 pairs (`dst` holds `src.len().div_ceil(2)` words).
pub(crate) fn convert_row_bf16(src: &[f32], dst: &mut [u32], features: CpuFeatures) {
    assert_eq!(dst.len(), src.len().div_ceil(2), "bf16 row length");
    let done = {
        #[cfg(target_arch = "x86_64")]
        {
            if features.native_bf16() {
                // SAFETY: the CPU has AVX512_BF16 (checked); lengths checked above.
                unsafe { avx512::convert_row_bf16(src, dst) }
            } else {
                0
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = features;
            0
        }
    };
    for (i, word) in dst.iter_mut().enumerate().skip(done / 2) {
        let lo = src.get(2 * i).copied().unwrap_or(0.0);
        let hi = src.get(2 * i + 1).copied().unwrap_or(0.0);
        *word = u32::from(bf16_bits(lo)) | (u32::from(bf16_bits(hi)) << 16);
    }
}

/// Softmax of a row in place: 16 lanes at a time where the CPU has AVX-512 (a scalar
/// loop took 5 ns a value, half of attention's time); `false` where it has not, and the
/// caller does it.
pub(crate) fn softmax_row(row: &mut [f32], features: CpuFeatures) -> bool {
    #[cfg(target_arch = "x86_64")]
    if features.avx512f {
        // SAFETY: the CPU has AVX-512F (checked).
        unsafe { avx512::softmax_row(row) };
        return true;
    }
    let _ = (row, features);
    false
}

/// `x * sigmoid(1.702 x)`, as the portable kernels and the element-wise pass compute it.
#[inline]
fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + super::fast_exp(-1.702 * x))
}

/// The portable kernels: plain loops over the same tile, the words decoded by `value`.
///
/// # Safety
/// As [`Kernel`].
unsafe fn portable_tile(t: &Tile, dot: impl Fn(u32, u32) -> f32) {
    debug_assert!(t.rows <= MR && t.cols <= NR);
    for r in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: row r < rows and column j < cols of the tile (the caller's contract).
            unsafe {
                let out = t.c.add(r * t.ldc + j);
                let mut acc = t.bias.map_or(0.0, |b| *b.add(j));
                for s in 0..t.steps {
                    acc += dot(*t.a.add(r * t.lda + s), (*t.b.add(s)).0[j]);
                }
                if t.quick_gelu {
                    acc = quick_gelu(acc);
                }
                if let Some(res) = t.residual {
                    acc += *res.add(r * t.ldc + j);
                }
                *out = acc;
            }
        }
    }
}

/// # Safety
/// As [`Kernel`].
unsafe fn portable_f32_tile(t: &Tile) {
    // SAFETY: forwarded.
    unsafe { portable_tile(t, |a, b| f32::from_bits(a) * f32::from_bits(b)) }
}

/// # Safety
/// As [`Kernel`].
unsafe fn portable_bf16_tile(t: &Tile) {
    let dot = |a: u32, b: u32| {
        // Both products exact in f32 (8-bit mantissas), summed as vdpbf16ps does.
        bf16_value(a as u16) * bf16_value(b as u16)
            + bf16_value((a >> 16) as u16) * bf16_value((b >> 16) as u16)
    };
    // SAFETY: forwarded.
    unsafe { portable_tile(t, dot) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::packed::{MR, NR};
    use super::Tile;

    const _: () = assert!(NR == 32, "two 16-lane registers per tile row");

    /// Lanes of the register that starts `left` values before the end of a row.
    #[inline]
    fn tail_mask(left: usize) -> __mmask16 {
        if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    }

    /// Lane masks of the two registers of a row with `cols` valid columns.
    #[inline]
    fn masks(cols: usize) -> (__mmask16, __mmask16) {
        (tail_mask(cols), tail_mask(cols.saturating_sub(16)))
    }

    /// `exp(x)` as `fast_exp`: range reduction to `[-ln2/2, ln2/2]`, the same degree-6
    /// polynomial, and the power of two applied by `vscalefps`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
            _mm512_set1_ps(88.3),
        );
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.388_525_4e-3);
        for c in [8.333_452e-3, 4.166_666_8e-2, 1.666_666_7e-1, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, k)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn quick_gelu(x: __m512) -> __m512 {
        let e = exp(_mm512_mul_ps(x, _mm512_set1_ps(-1.702)));
        _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn dot_f32(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dot_bf16(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        // SAFETY: __m512i and __m512bh are both 64 bytes of plain lanes.
        let (a, b) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(a),
                std::mem::transmute::<__m512i, __m512bh>(b),
            )
        };
        _mm512_dpbf16_ps(acc, a, b)
    }

    /// The kernel for tiles of one row count: each row is `(index, low accumulator, high
    /// accumulator)`, named variables rather than an array so that every accumulator
    /// stays in a register (an array indexed in loops is kept in memory, with a store
    /// after every multiply-add). `dot` accumulates a broadcast input word times a line
    /// half.
    macro_rules! tile_kernel {
        ($name:ident, $features:literal, $dot:ident, [$(($r:literal, $lo:ident, $hi:ident)),+]) => {
            #[target_feature(enable = $features)]
            unsafe fn $name(t: &Tile) {
                let (m0, m1) = masks(t.cols);
                // SAFETY (every pointer access below): rows 0..rows of the tile, steps
                // 0..t.steps and the masked columns 0..t.cols lie inside the buffers
                // (the caller's contract); lines are 64-byte aligned.
                let (init_lo, init_hi) = unsafe { bias_registers(t, (m0, m1)) };
                $(
                    let (mut $lo, mut $hi) = (init_lo, init_hi);
                )+
                for s in 0..t.steps {
                    let line = unsafe { t.b.add(s) }.cast::<__m512i>();
                    let (b0, b1) =
                        unsafe { (_mm512_load_si512(line), _mm512_load_si512(line.add(1))) };
                    $(
                        let a = _mm512_set1_epi32(unsafe { *t.a.add($r * t.lda + s) } as i32);
                        $lo = $dot($lo, a, b0);
                        $hi = $dot($hi, a, b1);
                    )+
                }
                $(
                    unsafe { finish_row(t, $r, $lo, $hi, (m0, m1)) };
                )+
            }
        };
    }

    /// See `super::store_sums`.
    ///
    /// # Safety
    /// As `super::store_sums`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_sums(t: &Tile, sums: *const f32, ld: usize) {
        let (m0, m1) = masks(t.cols);
        // SAFETY (every access): rows 0..t.rows and the masked columns 0..t.cols of the
        // sums, the bias, the residual and the output (the caller's contract).
        let (bias_lo, bias_hi) = unsafe { bias_registers(t, (m0, m1)) };
        for r in 0..t.rows {
            let row = unsafe { sums.add(r * ld) };
            unsafe {
                let lo = _mm512_add_ps(bias_lo, _mm512_maskz_loadu_ps(m0, row));
                let hi = _mm512_add_ps(bias_hi, _mm512_maskz_loadu_ps(m1, row.add(16)));
                finish_row(t, r, lo, hi, (m0, m1));
            }
        }
    }

    /// The tile's bias in the two registers of a row (zero without one).
    ///
    /// # Safety
    /// The bias, if any, has the masked columns (the kernels' contract).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bias_registers(t: &Tile, (m0, m1): (__mmask16, __mmask16)) -> (__m512, __m512) {
        match t.bias {
            // SAFETY: the caller's contract.
            Some(bias) => unsafe {
                (
                    _mm512_maskz_loadu_ps(m0, bias),
                    _mm512_maskz_loadu_ps(m1, bias.add(16)),
                )
            },
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        }
    }

    /// The end of output row `r` of a tile, whose sums (bias included) are `lo` and `hi`:
    /// `quick_gelu` and the residual as the tile asks, then the masked store.
    ///
    /// # Safety
    /// Row `r` and the masked columns of the output and the residual lie inside their
    /// buffers (the kernels' contract).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_row(
        t: &Tile,
        r: usize,
        mut lo: __m512,
        mut hi: __m512,
        (m0, m1): (__mmask16, __mmask16),
    ) {
        if t.quick_gelu {
            lo = quick_gelu(lo);
            hi = quick_gelu(hi);
        }
        // SAFETY: the caller's contract.
        unsafe {
            if let Some(res) = t.residual {
                let res = res.add(r * t.ldc);
                lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(m0, res));
                hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(m1, res.add(16)));
            }
            let out = t.c.add(r * t.ldc);
            _mm512_mask_storeu_ps(out, m0, lo);
            _mm512_mask_storeu_ps(out.add(16), m1, hi);
        }
    }

    /// The f32 and the bf16 kernel of every row count, and the dispatch on a tile's rows.
    /// Each entry adds one row to those before it, so the kernel for `count` rows gets
    /// rows `0..count` and the row list is written once.
    macro_rules! tile_kernels {
        ($([$count:literal, $f32:ident, $bf16:ident, $row:tt]),+) => {
            tile_kernels!(@each [] $([$f32, $bf16, $row])+);

            /// # Safety
            /// As `Kernel`, on a CPU with AVX-512F.
            pub(super) unsafe fn f32_tile(t: &Tile) {
                // SAFETY: the caller's contract, and the CPU feature (checked by `select`).
                unsafe {
                    match t.rows {
                        $($count => $f32(t),)+
                        _ => unreachable!("tile rows are 1..=MR"),
                    }
                }
            }

            /// # Safety
            /// As `Kernel`, on a CPU with AVX-512F and AVX512_BF16.
            pub(super) unsafe fn bf16_tile(t: &Tile) {
                // SAFETY: the caller's contract, and the CPU features (checked by `select`).
                unsafe {
                    match t.rows {
                        $($count => $bf16(t),)+
                        _ => unreachable!("tile rows are 1..=MR"),
                    }
                }
            }
        };
        (@each [$($done:tt),*]) => {};
        (@each [$($done:tt),*] [$f32:ident, $bf16:ident, $row:tt] $($rest:tt)*) => {
            tile_kernel!($f32, "avx512f", dot_f32, [$($done,)* $row]);
            tile_kernel!($bf16, "avx512f,avx512bf16", dot_bf16, [$($done,)* $row]);
            tile_kernels!(@each [$($done,)* $row] $($rest)*);
        };
    }

    const _: () = assert!(MR == 10, "one kernel per row count 1..=MR");
    tile_kernels!(
        [1, f32_rows_1, bf16_rows_1, (0, lo0, hi0)],
        [2, f32_rows_2, bf16_rows_2, (1, lo1, hi1)],
        [3, f32_rows_3, bf16_rows_3, (2, lo2, hi2)],
        [4, f32_rows_4, bf16_rows_4, (3, lo3, hi3)],
        [5, f32_rows_5, bf16_rows_5, (4, lo4, hi4)],
        [6, f32_rows_6, bf16_rows_6, (5, lo5, hi5)],
        [7, f32_rows_7, bf16_rows_7, (6, lo6, hi6)],
        [8, f32_rows_8, bf16_rows_8, (7, lo7, hi7)],
        [9, f32_rows_9, bf16_rows_9, (8, lo8, hi8)],
        [10, f32_rows_10, bf16_rows_10, (9, lo9, hi9)]
    );

    /// Softmax of one row in place, 16 values at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_row(row: &mut [f32]) {
        let n = row.len();
        let p = row.as_mut_ptr();
        let low = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut max = low;
        // SAFETY (every access): lanes i..i + 16 masked to the row's end.
        for i in (0..n).step_by(16) {
            let v = unsafe { _mm512_mask_loadu_ps(low, tail_mask(n - i), p.add(i)) };
            max = _mm512_max_ps(max, v);
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let m = tail_mask(n - i);
            let v = unsafe { _mm512_maskz_loadu_ps(m, p.add(i)) };
            let e = _mm512_maskz_mov_ps(m, exp(_mm512_sub_ps(v, max)));
            sum = _mm512_add_ps(sum, e);
            unsafe { _mm512_mask_storeu_ps(p.add(i), m, e) };
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for i in (0..n).step_by(16) {
            let m = tail_mask(n - i);
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(v, inv));
            }
        }
    }

    /// Converts whole 32-value chunks of `src` to bf16 pairs in `dst`; returns how many
    /// values it converted (the caller does the rest).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `dst` holds at least `src.len() / 2` words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert_row_bf16(src: &[f32], dst: &mut [u32]) -> usize {
        let chunks = src.len() / 32;
        for c in 0..chunks {
            // SAFETY: values 32c..32c + 32 of src and words 16c..16c + 16 of dst exist.
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(32 * c));
                let hi = _mm512_loadu_ps(src.as_ptr().add(32 * c + 16));
                let pairs = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    dst.as_mut_ptr().add(16 * c).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(pairs),
                );
            }
        }
        chunks * 32
    }
}
