//! Speed of the one-node ops of an S5 layer on a training-size activation `[8, 2048, 128]`,
//! forward and forward+backward, each against the same map built from candle ops: the
//! `half_glu2` gate with dropout and residual (`s5::fused::glu_residual`) and the SSM
//! (`s5::ssm_op::ssm_apply`, 64 complex modes, both directions); f32 (vectorised kernels of
//! `s5::vmath`) and f64 (libm), and candle's own `gelu` for reference. Median of 7 runs, printed as JSON lines with nanoseconds per
//! element and GB/s of memory traffic (inputs + outputs; for the SSM, of `u` and `y` only).
//!
//! Run: `cargo bench -p s5 --bench fused_ops`.

use candle_core::{DType, Device, Tensor, Var};
use s5::fused::{ChannelMask, glu_residual};
use s5::scan::{Direction, diag_scan};
use s5::ssm_op::ssm_apply;
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[3]
}

fn report(op: &str, dtype: DType, n: usize, streams: usize, ms: f64) {
    let bytes = (n * streams * dtype.size_in_bytes()) as f64;
    println!(
        "{{\"op\":\"{op}\",\"dtype\":\"{dtype:?}\",\"elements\":{n},\"ms\":{ms:.2},\"ns_per_element\":{:.2},\"gb_per_s\":{:.1}}}",
        ms * 1e6 / n as f64,
        bytes / (ms * 1e-3) / 1e9
    );
}

fn main() -> anyhow::Result<()> {
    s5::perf::keep_freed_buffers();
    let shape = (8, 2048, 128);
    let n = 8 * 2048 * 128;
    let mask = ChannelMask::new(
        8,
        128,
        (0..8 * 128).map(|i| (i % 7 != 0) as u8 as f32).collect(),
    )?;
    for dtype in [DType::F32, DType::F64] {
        let randn = |std: f32| -> anyhow::Result<Var> {
            Ok(Var::from_tensor(
                &Tensor::randn(0f32, std, shape, &Device::Cpu)?.to_dtype(dtype)?,
            )?)
        };
        let (x, a) = (randn(2.0)?, randn(2.0)?);
        let d = Var::from_tensor(&Tensor::ones(128, dtype, &Device::Cpu)?)?;
        // The half_glu2 gate with dropout and residual: one node against candle ops.
        let w = Var::from_tensor(
            &Tensor::randn(0f32, 0.09, (128, 128), &Device::Cpu)?.to_dtype(dtype)?,
        )?;
        let glu_fused = || glu_residual(&x, &a, &w, &d, Some(&mask), Some(&mask)).unwrap();
        let glu_unfused = || {
            let m = mask.to_tensor(&x).unwrap();
            let g = a.gelu().unwrap().broadcast_mul(&m).unwrap();
            let z = g
                .reshape((8 * 2048, 128))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
                .reshape(shape)
                .unwrap()
                .broadcast_add(&d)
                .unwrap();
            let out = (a.as_tensor() * candle_nn::ops::sigmoid(&z).unwrap()).unwrap();
            (x.as_tensor() + out.broadcast_mul(&m).unwrap()).unwrap()
        };
        for (name, f) in [
            ("glu_residual one node", &glu_fused as &dyn Fn() -> Tensor),
            ("glu_residual candle ops", &glu_unfused),
        ] {
            let ms = median_ms(|| {
                f();
            });
            report(&format!("{name} forward"), dtype, n, 3, ms);
            let ms = median_ms(|| {
                f().sum_all().unwrap().backward().unwrap();
            });
            report(&format!("{name} forward+backward"), dtype, n, 6, ms);
        }
        // The SSM u -> y: one node against reshape / matmul / scan / matmul / feed-through.
        let (b, l, h, m) = (8, 2048, 128, 64);
        let small = |shape: &[usize], std: f32| -> anyhow::Result<Var> {
            Ok(Var::from_tensor(
                &Tensor::randn(0f32, std, shape, &Device::Cpu)?.to_dtype(dtype)?,
            )?)
        };
        let lam = Var::from_tensor(
            &(Tensor::ones((m, 2), DType::F32, &Device::Cpu)? * 0.7)?.to_dtype(dtype)?,
        )?;
        let (wb, wc) = (small(&[h, 2 * m], 0.1)?, small(&[4 * m, h], 0.1)?);
        let lens = vec![l as u32; b];
        let ssm_fused = || ssm_apply(&x, &lam, &wb, &wc, &d, &lens, Direction::Both).unwrap();
        let ssm_unfused = || {
            let v = x
                .reshape((b * l, h))
                .unwrap()
                .matmul(&wb)
                .unwrap()
                .reshape((b, l, m, 2))
                .unwrap();
            let s = diag_scan(&lam, &v, Some(&lens), Direction::Both, None)
                .unwrap()
                .reshape((b * l, 4 * m))
                .unwrap();
            let y = s.matmul(&wc).unwrap().reshape((b, l, h)).unwrap();
            (y + x.broadcast_mul(&d).unwrap()).unwrap()
        };
        for (name, f) in [
            ("ssm one node", &ssm_fused as &dyn Fn() -> Tensor),
            ("ssm candle ops", &ssm_unfused),
        ] {
            let ms = median_ms(|| {
                f();
            });
            report(&format!("{name} forward"), dtype, n, 2, ms);
            let ms = median_ms(|| {
                f().sum_all().unwrap().backward().unwrap();
            });
            report(&format!("{name} forward+backward"), dtype, n, 4, ms);
        }
        let ms = median_ms(|| {
            x.as_tensor().gelu().unwrap();
        });
        report("candle gelu forward", dtype, n, 2, ms);
    }
    Ok(())
}
