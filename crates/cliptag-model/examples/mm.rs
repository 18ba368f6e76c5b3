//! Temporary timing probe.
#![allow(missing_docs, clippy::unwrap_used)]
use gemm::{Parallelism, gemm};
use std::time::Instant;
fn main() {
    for &(m, k, n) in &[
        (1600usize, 768usize, 3072usize),
        (1600, 3072, 768),
        (400, 768, 3072),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let ws: Vec<Vec<f32>> = (0..12)
            .map(|j| (0..k * n).map(|i| ((i + j) % 5) as f32 * 0.1).collect())
            .collect();
        for read_dst in [false, true] {
            for fresh in [false, true] {
                let mut dst = vec![0f32; m * n];
                let s = Instant::now();
                for _ in 0..2 {
                    for w in &ws {
                        if fresh {
                            dst = vec![0f32; m * n];
                        }
                        unsafe {
                            gemm(
                                m,
                                n,
                                k,
                                dst.as_mut_ptr(),
                                1,
                                n as isize,
                                read_dst,
                                x.as_ptr(),
                                1,
                                k as isize,
                                w.as_ptr(),
                                1,
                                n as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                Parallelism::Rayon(2),
                            )
                        }
                    }
                }
                let dt = s.elapsed().as_secs_f64() / 24.0;
                println!(
                    "{m}x{k}x{n} read_dst={read_dst} fresh={fresh}: {:.2} ms {:.0} GFLOP/s",
                    dt * 1e3,
                    2.0 * (m * k * n) as f64 / dt / 1e9
                );
            }
        }
    }
}
