//! bf16 linear layers on AMX tiles (Sapphire Rapids and later): one `tdpbf16ps`
//! multiplies 16 rows of 32 bf16 inputs by 32 x 16 bf16 weights into 16 x 16 f32 sums,
//! the work of sixteen `vdpbf16ps`.
//!
//! The packed layout is already the tiles' operand layout. A weight tile is 16 steps of
//! one panel, the left or the right 64 bytes of each 128-byte line (the tile's row stride
//! is the line); an input tile is 16 rows of 16 words of bf16 pairs at the input's row
//! stride. A tile of this kernel is up to 32 rows by one 32-column panel: its four 16 x
//! 16 sums stay in tile registers 4 to 7 over all the steps, then pass through a 4 KiB
//! buffer on the stack where the AVX-512 epilogue adds the bias, applies `quick_gelu` and
//! the residual on the way to the output.
//!
//! Tiles load whole: the packed matrix has a multiple of [`STEPS`] steps (zero-padded)
//! and the input buffer a multiple of [`ROWS`] rows; the rows past the input's end are
//! computed and dropped.

use std::arch::asm;

use super::microkernel::{self, Tile};
use super::packed::NR;

/// Rows of an input tile.
pub(crate) const ROWS: usize = 16;
/// Steps (bf16 pairs) in a row of an input tile: 64 bytes.
pub(crate) const STEPS: usize = 16;
/// Rows of one kernel call: two input tiles.
pub(crate) const MR: usize = 2 * ROWS;

const _: () = assert!(NR == 32, "a panel is two 16-column weight tiles");

/// Palette 1 with all eight tiles at 16 rows of 64 bytes: 0-1 inputs, 2-3 weights, 4-7
/// sums.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        // Bytes per row (little-endian u16 at 16 + 2t), then rows (u8 at 48 + t).
        bytes[16 + 2 * tile] = 64;
        bytes[48 + tile] = ROWS as u8;
        tile += 1;
    }
    TileConfig(bytes)
};

/// The tile configuration of the calling thread, from [`configure`] until dropped (not
/// `Send`: it releases the tiles of the thread it was made on).
pub(crate) struct TilesInUse(std::marker::PhantomData<*const ()>);

/// Loads the tile configuration on this thread. Dropping the guard releases the tiles, so
/// that context switches stop saving their 8 KiB of state.
///
/// # Safety
/// The CPU has AMX-BF16 and the process may use the tile data (see `isa`).
pub(crate) unsafe fn configure() -> TilesInUse {
    // SAFETY: the configuration is 64 aligned bytes; AMX is usable (the caller's contract).
    unsafe {
        asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
    }
    TilesInUse(std::marker::PhantomData)
}

impl Drop for TilesInUse {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured on this thread (this guard is not Send).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// The sums of one kernel call, row-major `[MR, NR]`, where the tiles store them.
#[repr(C, align(64))]
struct Sums([f32; MR * NR]);

/// One tile of up to [`MR`] rows and one panel, on AMX.
///
/// # Safety
/// As `microkernel::Kernel`, and: the tiles are configured on this thread
/// ([`configure`]); `t.steps` is a multiple of [`STEPS`]; the input has whole
/// [`ROWS`]-row tiles readable from `t.a` (rows past `t.rows` are read, not used); the
/// panel's lines are 128 bytes apart.
pub(crate) unsafe fn bf16_tile(t: &Tile) {
    debug_assert!(t.rows >= 1 && t.rows <= MR && t.steps.is_multiple_of(STEPS));
    // Not zeroed: the tiles store all of it (a 4 KiB clear per call is a few percent of
    // a call over 768 inputs).
    let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
    let top = sums.as_mut_ptr().cast::<f32>();
    let iterations = t.steps / STEPS;
    let lda = t.lda * 4;
    let line = size_of::<super::packed::Line>();
    if iterations == 0 {
        // SAFETY: the buffer holds MR * NR values.
        unsafe { top.write_bytes(0, MR * NR) };
    } else {
        // SAFETY: the operands' tiles lie inside the buffers (the caller's contract);
        // each iteration moves 64 bytes along the input rows and 16 lines down the
        // panel; the sums' tiles fill the 32 x 32 buffer (row stride 128 bytes).
        unsafe {
            if t.rows > ROWS {
                asm!(
                    "tilezero tmm4",
                    "tilezero tmm5",
                    "tilezero tmm6",
                    "tilezero tmm7",
                    "2:",
                    "tileloadd tmm2, [{b} + {line}*1]",
                    "tileloadd tmm3, [{b} + {line}*1 + 64]",
                    "tileloadd tmm0, [{a} + {lda}*1]",
                    "tdpbf16ps tmm4, tmm0, tmm2",
                    "tdpbf16ps tmm5, tmm0, tmm3",
                    "tileloadd tmm1, [{a2} + {lda}*1]",
                    "tdpbf16ps tmm6, tmm1, tmm2",
                    "tdpbf16ps tmm7, tmm1, tmm3",
                    "add {a}, 64",
                    "add {a2}, 64",
                    "add {b}, {step}",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{s} + {line}*1], tmm4",
                    "tilestored [{s} + {line}*1 + 64], tmm5",
                    "tilestored [{s2} + {line}*1], tmm6",
                    "tilestored [{s2} + {line}*1 + 64], tmm7",
                    a = inout(reg) t.a => _,
                    a2 = inout(reg) t.a.add(ROWS * t.lda) => _,
                    b = inout(reg) t.b => _,
                    n = inout(reg) iterations => _,
                    lda = in(reg) lda,
                    line = in(reg) line,
                    step = in(reg) STEPS * line,
                    s = in(reg) top,
                    s2 = in(reg) top.add(ROWS * NR),
                    options(nostack),
                );
            } else {
                asm!(
                    "tilezero tmm4",
                    "tilezero tmm5",
                    "2:",
                    "tileloadd tmm2, [{b} + {line}*1]",
                    "tileloadd tmm3, [{b} + {line}*1 + 64]",
                    "tileloadd tmm0, [{a} + {lda}*1]",
                    "tdpbf16ps tmm4, tmm0, tmm2",
                    "tdpbf16ps tmm5, tmm0, tmm3",
                    "add {a}, 64",
                    "add {b}, {step}",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{s} + {line}*1], tmm4",
                    "tilestored [{s} + {line}*1 + 64], tmm5",
                    a = inout(reg) t.a => _,
                    b = inout(reg) t.b => _,
                    n = inout(reg) iterations => _,
                    lda = in(reg) lda,
                    line = in(reg) line,
                    step = in(reg) STEPS * line,
                    s = in(reg) top,
                    options(nostack),
                );
            }
        }
    }
    // SAFETY: `sums` holds MR rows of NR values; the output's contract is the caller's;
    // every CPU with AMX has AVX-512F.
    unsafe { microkernel::store_sums(t, top, NR) };
}
