//! Fused ops of an S5 layer against candle's unfused ops (forward and autograd) and finite
//! differences, in f64; their f32 (vectorised) forward against f64.

use candle_core::{DType, Device, Tensor, Var};
use s5::fused::{ChannelMask, glu_residual};

mod tensor_support;
use tensor_support::{central_difference, max_diff, uniform, values as v};

fn randn(shape: (usize, usize, usize), std: f64, seed: u64) -> Tensor {
    uniform(&[shape.0, shape.1, shape.2], std * 1.7, seed)
}

/// A dropout-like mask: every third (sequence, channel) dropped, the rest scaled by 1/(1 − p).
fn mask(b: usize, h: usize) -> ChannelMask {
    let vals = (0..b * h)
        .map(|i| if i % 3 == 1 { 0.0 } else { 1.0 / 0.9 })
        .collect();
    ChannelMask::new(b, h, vals).unwrap()
}

// [3, 300, 7]: 900 rows span several parallel work units of the fused ops.
const SHAPE: (usize, usize, usize) = (3, 300, 7);

/// `x + y ⊙ σ(W (GELU(y) ⊙ m₁) + b) ⊙ m₂` from candle ops.
fn glu_unfused(x: &Tensor, y: &Tensor, w: &Tensor, b: &Tensor, m: Option<&ChannelMask>) -> Tensor {
    let (bb, l, h) = y.dims3().unwrap();
    let mut g = y.gelu().unwrap();
    if let Some(m) = m {
        g = g.broadcast_mul(&m.to_tensor(y).unwrap()).unwrap();
    }
    let a = g
        .reshape((bb * l, h))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap()
        .reshape((bb, l, h))
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    let mut out = (y * candle_nn::ops::sigmoid(&a).unwrap()).unwrap();
    if let Some(m) = m {
        out = out.broadcast_mul(&m.to_tensor(y).unwrap()).unwrap();
    }
    (x + out).unwrap()
}

struct GluInputs {
    x: Var,
    y: Var,
    w: Var,
    b: Var,
}

fn glu_inputs() -> GluInputs {
    let h = SHAPE.2;
    GluInputs {
        x: Var::from_tensor(&randn(SHAPE, 1.0, 1)).unwrap(),
        y: Var::from_tensor(&randn(SHAPE, 2.0, 2)).unwrap(),
        w: Var::from_tensor(&randn((1, h, h), 0.6, 3).squeeze(0).unwrap()).unwrap(),
        b: Var::from_tensor(&randn((1, 1, h), 1.0, 4).flatten_all().unwrap()).unwrap(),
    }
}

#[test]
fn glu_residual_matches_unfused_autograd() {
    let p = glu_inputs();
    let wt = randn(SHAPE, 1.0, 6);
    for m in [None, Some(mask(SHAPE.0, SHAPE.2))] {
        let ours = glu_residual(&p.x, &p.y, &p.w, &p.b, m.as_ref(), m.as_ref()).unwrap();
        let theirs = glu_unfused(&p.x, &p.y, &p.w, &p.b, m.as_ref());
        assert!(max_diff(&v(&ours), &v(&theirs)) < 1e-13);
        let g1 = ours
            .mul(&wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = theirs
            .mul(&wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // candle's GELU backward uses 6-digit constants: y's gradient agrees to ~1e-6 only.
        for (name, var, tol) in [
            ("x", &p.x, 1e-14),
            ("y", &p.y, 1e-5),
            ("W", &p.w, 1e-10),
            ("bias", &p.b, 1e-10),
        ] {
            let d = max_diff(&v(g1.get(var).unwrap()), &v(g2.get(var).unwrap()));
            assert!(d < tol, "{name} (mask {}): {d}", m.is_some());
        }
        if let Some(m) = &m {
            // A (sequence, channel) dropped at both sites passes no gradient to y anywhere.
            let (_, l, h) = SHAPE;
            for (e, &g) in v(g1.get(&p.y).unwrap()).iter().enumerate() {
                let (bi, c) = (e / (l * h), e % h);
                assert_eq!(g == 0.0, m.values[bi * h + c] == 0.0, "element {e}");
            }
        }
        // f32 (vectorised kernels) agrees with f64.
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let o32 = glu_residual(
            &f(&p.x),
            &f(&p.y),
            &f(&p.w),
            &f(&p.b),
            m.as_ref(),
            m.as_ref(),
        )
        .unwrap();
        assert!(max_diff(&v(&o32), &v(&ours)) < 1e-5);
    }
}

#[test]
fn glu_residual_gradients_match_central_differences() {
    let p = glu_inputs();
    let wt = randn(SHAPE, 1.0, 7);
    let (m1, m2) = (mask(SHAPE.0, SHAPE.2), {
        let h = SHAPE.2;
        let vals = (0..SHAPE.0 * h)
            .map(|i| if i % 4 == 0 { 0.0 } else { 1.0 / 0.9 })
            .collect();
        ChannelMask::new(SHAPE.0, h, vals).unwrap()
    });
    let out = |p: &GluInputs| glu_residual(&p.x, &p.y, &p.w, &p.b, Some(&m1), Some(&m2)).unwrap();
    let loss = |p: &GluInputs| {
        out(p)
            .mul(&wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = out(&p)
        .mul(&wt)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let h = SHAPE.2;
    let cases: [(&str, &Var, &[usize]); 4] = [
        ("x", &p.x, &[0, 2000, 6299]),
        ("y", &p.y, &[1, 17, 1000, 2101, 6298]),
        ("W", &p.w, &[0, h + 3, h * h - 1]),
        ("bias", &p.b, &[0, h - 1]),
    ];
    let eps = 1e-6;
    for (name, var, idx) in cases {
        let g = v(grads.get(var).unwrap());
        for &i in idx {
            let fd = central_difference(var, i, eps, || loss(&p));
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name}[{i}]: {} vs fd {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn glu_residual_rejects_bad_shapes_masks_and_dtypes() {
    let p = glu_inputs();
    let call = |x: &Tensor, w: &Tensor, m: Option<&ChannelMask>| {
        glu_residual(x, &p.y, w, &p.b, m, None).map_err(|e| e.to_string())
    };
    assert!(call(&p.x, &p.w, None).is_ok());
    assert!(call(&p.x.narrow(1, 0, 10).unwrap(), &p.w, None).is_err());
    assert!(call(&p.x, &p.w.narrow(0, 0, 3).unwrap(), None).is_err());
    assert!(call(&p.x, &p.w, Some(&mask(2, SHAPE.2))).is_err());
    let err = call(&p.x.to_dtype(DType::F32).unwrap(), &p.w, None).unwrap_err();
    assert!(err.contains("dtype"), "{err}");
}

/// The fused masked BatchNorm equals the same formula written with candle ops, forward and
/// gradients (z, γ, β), in f64.
#[test]
fn masked_batch_norm_matches_unfused_autograd() {
    let dev = Device::Cpu;
    // 700 rows: several parallel work units; the last rows are padding.
    let (n, h) = (700, 6);
    let mask: Vec<bool> = (0..n).map(|i| i % 5 != 3 && i < 650).collect();
    let z = Var::from_tensor(&Tensor::randn(0.5f64, 2.0, (n, h), &dev).unwrap()).unwrap();
    let g = Var::from_tensor(&Tensor::randn(1f64, 0.3, h, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f64, 0.3, h, &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f64, 1.0, (n, h), &dev).unwrap();
    let (ours, mean, var) = s5::fused::masked_batch_norm(&z, &mask, &g, &b, 1e-5).unwrap();
    // Reference with candle ops.
    let m: Vec<f64> = mask.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
    let nt: f64 = m.iter().sum();
    let mrow = Tensor::from_vec(m, (1, n), &dev).unwrap();
    let mu = (mrow.matmul(&z).unwrap() / nt).unwrap();
    let zc = z.broadcast_sub(&mu).unwrap();
    let vv = (mrow.matmul(&zc.sqr().unwrap()).unwrap() / nt).unwrap();
    let inv = (vv.clone() + 1e-5)
        .unwrap()
        .sqrt()
        .unwrap()
        .recip()
        .unwrap();
    let theirs = zc
        .broadcast_mul(&inv)
        .unwrap()
        .broadcast_mul(&g)
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    assert!(max_diff(&v(&ours), &v(&theirs)) < 1e-12);
    assert!(max_diff(&mean, &v(&mu)) < 1e-12);
    assert!(max_diff(&var, &v(&vv)) < 1e-12);
    let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = theirs
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in [("z", &z), ("gamma", &g), ("beta", &b)] {
        let d = max_diff(&v(g1.get(var).unwrap()), &v(g2.get(var).unwrap()));
        assert!(d < 1e-10, "{name}: {d}");
    }
    // f32 storage (f64 accumulation) agrees with f64, forward and gradients.
    let f = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
    let (z32, g32, b32) = (f(&z), f(&g), f(&b));
    let (o32, mean32, var32) = s5::fused::masked_batch_norm(&z32, &mask, &g32, &b32, 1e-5).unwrap();
    assert!(max_diff(&v(&o32), &v(&ours)) < 1e-5);
    assert!(max_diff(&mean32, &mean) < 1e-6 && max_diff(&var32, &var) < 1e-5);
    let gs32 = o32
        .mul(&w.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, a, b) in [("z", &z32, &z), ("gamma", &g32, &g), ("beta", &b32, &b)] {
        let (x32, x64) = (v(gs32.get(a).unwrap()), v(g1.get(b).unwrap()));
        let scale = x64.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let d = max_diff(&x32, &x64) / scale;
        assert!(d < 1e-5, "f32 {name}: relative {d}");
    }
}

/// Evaluation-mode BatchNorm (given statistics) equals the affine map from candle ops, forward
/// and gradients (z, γ, β), in f64 and f32.
#[test]
fn batch_norm_eval_matches_candle_ops() {
    let dev = Device::Cpu;
    let (n, h) = (500, 5);
    let z = Var::from_tensor(&Tensor::randn(0.5f64, 2.0, (n, h), &dev).unwrap()).unwrap();
    let g = Var::from_tensor(&Tensor::randn(1f64, 0.3, h, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f64, 0.3, h, &dev).unwrap()).unwrap();
    let (mean, var) = (
        vec![0.1, -0.2, 0.3, 0.0, 1.0],
        vec![0.5, 2.0, 1.0, 0.01, 3.0],
    );
    let w = Tensor::randn(0f64, 1.0, (n, h), &dev).unwrap();
    let ours = s5::fused::batch_norm_eval(&z, &g, &b, &mean, &var, 1e-5).unwrap();
    let t = |x: &[f64]| Tensor::from_slice(x, h, &dev).unwrap();
    let inv = (t(&var) + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
    let theirs = z
        .broadcast_sub(&t(&mean))
        .unwrap()
        .broadcast_mul(&inv)
        .unwrap()
        .broadcast_mul(&g)
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    assert!(max_diff(&v(&ours), &v(&theirs)) < 1e-12);
    let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = theirs
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in [("z", &z), ("gamma", &g), ("beta", &b)] {
        let d = max_diff(&v(g1.get(var).unwrap()), &v(g2.get(var).unwrap()));
        assert!(d < 1e-10, "{name}: {d}");
    }
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let o32 = s5::fused::batch_norm_eval(&f(&z), &f(&g), &f(&b), &mean, &var, 1e-5).unwrap();
    assert!(max_diff(&v(&o32), &v(&ours)) < 1e-4);
    assert!(s5::fused::batch_norm_eval(&z, &g, &b, &mean[..4], &var, 1e-5).is_err());
}
