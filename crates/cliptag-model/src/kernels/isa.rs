//! What the CPU offers the matmul kernels, detected once at run time, so one binary runs
//! the widest kernels a machine has and plain code everywhere else.

use std::sync::OnceLock;

/// The environment variable that caps the kernels' instruction sets.
pub const MAX_ISA_VARIABLE: &str = "CLIPTAG_MAX_CPU_ISA";

/// The instruction-set extensions the kernels can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// AVX-512 Foundation: the f32 kernels' 16-wide fused multiply-adds.
    pub avx512f: bool,
    /// AVX512_BF16: `vdpbf16ps`, pairs of bf16 products accumulated into f32.
    pub avx512_bf16: bool,
    /// AMX-BF16 tiles, with the kernel's permission to use them: the bf16 linear
    /// layers run on `tdpbf16ps` (16 x 16 x 32 products an instruction).
    pub amx_bf16: bool,
}

impl CpuFeatures {
    /// The features of this machine's CPU (detected once, then cached), less those the
    /// environment variable `CLIPTAG_MAX_CPU_ISA` turns off: `portable` (no AVX-512 at
    /// all), `avx512` (no bf16 dot products) or `avx512_bf16` (no AMX tiles), to compare
    /// kernels or to run the fallback paths on a CPU that does not need them.
    pub fn detected() -> Self {
        static DETECTED: OnceLock<CpuFeatures> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let cap = std::env::var(MAX_ISA_VARIABLE).unwrap_or_default();
            detect().capped(&cap)
        })
    }

    /// These features less those above `cap` (`portable`, `avx512`, `avx512_bf16`;
    /// anything else leaves them as they are).
    pub fn capped(self, cap: &str) -> Self {
        match cap.trim() {
            "portable" => Self::none(),
            "avx512" => Self {
                avx512_bf16: false,
                amx_bf16: false,
                ..self
            },
            "avx512_bf16" => Self {
                amx_bf16: false,
                ..self
            },
            _ => self,
        }
    }

    /// No extension at all: what the portable code paths assume.
    pub const fn none() -> Self {
        Self {
            avx512f: false,
            avx512_bf16: false,
            amx_bf16: false,
        }
    }

    /// Whether bf16 matmuls run natively (bf16 dot products into f32).
    pub fn native_bf16(&self) -> bool {
        self.avx512f && self.avx512_bf16
    }

    /// Whether bf16 linear layers run on AMX tiles (the epilogue and the conversions
    /// around them use AVX-512, which every CPU with AMX has).
    pub fn amx_tiles(&self) -> bool {
        self.native_bf16() && self.amx_bf16
    }

    /// The extensions, as `lscpu` names them, for logs and reports.
    pub fn names(&self) -> String {
        let names: Vec<&str> = [
            (self.avx512f, "avx512f"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.amx_bf16, "amx_bf16"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect();
        if names.is_empty() {
            "no AVX-512".into()
        } else {
            names.join(" ")
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    CpuFeatures {
        avx512f: std::arch::is_x86_feature_detected!("avx512f"),
        avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
        amx_bf16: amx_bf16_usable(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::none()
}

/// AMX-BF16 in CPUID (leaf 7, EDX bit 22) with the tile state enabled by the OS
/// (XCR0 bits 17 and 18) and granted to this process. The standard library's detection
/// of it is not stable yet.
#[cfg(target_arch = "x86_64")]
fn amx_bf16_usable() -> bool {
    amx_bf16_enabled() && tile_data_permitted()
}

/// Linux hands out the tile registers' 8 KiB of state only to processes that ask (once,
/// for all their threads); without it the first tile instruction raises SIGILL.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn tile_data_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only reads its integer argument.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other systems: no tiles (their permission model is not handled).
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn tile_data_permitted() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn amx_bf16_enabled() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if leaf7.edx & (1 << 22) == 0 || !osxsave {
        return false;
    }
    // SAFETY: XGETBV is available when the OS has set CR4.OSXSAVE (checked above).
    let xcr0 = unsafe { std::arch::x86_64::_xgetbv(0) };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_only_take_features_away() {
        let all = CpuFeatures {
            avx512f: true,
            avx512_bf16: true,
            amx_bf16: true,
        };
        assert_eq!(all.capped("portable"), CpuFeatures::none());
        let avx512 = all.capped("avx512");
        assert!(avx512.avx512f && !avx512.native_bf16() && !avx512.amx_bf16);
        let bf16 = all.capped("avx512_bf16");
        assert!(bf16.native_bf16() && !bf16.amx_tiles());
        assert!(all.amx_tiles());
        assert_eq!(all.capped(""), all);
        assert_eq!(all.capped("anything"), all);
        assert_eq!(CpuFeatures::none().capped("avx512"), CpuFeatures::none());
        assert_eq!(all.names(), "avx512f avx512_bf16 amx_bf16");
        assert_eq!(CpuFeatures::none().names(), "no AVX-512");
    }
}
