//! Fused ops of an S5 layer against candle's unfused ops (forward and autograd) and finite
//! differences, in f64; their f32 (vectorised) forward against f64.

use candle_core::{DType, Device, Tensor, Var};
use s5::fused::{ChannelMask, gelu_dropout, sigmoid_gate};

fn v(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn randn(shape: (usize, usize, usize), std: f64, seed: u64) -> Tensor {
    // Deterministic inputs (candle's randn draws from a thread-local generator).
    let n = shape.0 * shape.1 * shape.2;
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let vals: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * std * 1.7
        })
        .collect();
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
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

#[test]
fn gelu_dropout_matches_candle_and_finite_differences() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&randn(SHAPE, 2.0, 1)).unwrap();
    let w = randn(SHAPE, 1.0, 2);
    let m = mask(SHAPE.0, SHAPE.2);
    let ours = gelu_dropout(&x, Some(&m)).unwrap();
    let theirs = x
        .gelu()
        .unwrap()
        .broadcast_mul(&m.to_tensor(&x).unwrap())
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
    let (g1, g2) = (v(g1.get(&x).unwrap()), v(g2.get(&x).unwrap()));
    // candle's backward uses 6-digit constants, hence the tolerance.
    assert!(max_diff(&g1, &g2) < 1e-5);
    // Central differences (without mask) at points in different work units.
    let (xs, ws) = (v(&x), v(&w));
    let plain = gelu_dropout(&x, None).unwrap();
    let gp = v(plain
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(&x)
        .unwrap());
    for i in [0usize, 17, 1000, 6299] {
        let f = |d: f64| {
            let t = Tensor::new(&[[[xs[i] + d]]], &dev).unwrap();
            v(&gelu_dropout(&t, None).unwrap())[0]
        };
        let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
        assert!((fd * ws[i] - gp[i]).abs() < 1e-7, "i={i}");
    }
    // Dropped (sequence, channel) pairs pass no gradient at any position; kept ones do.
    let (_, l, h) = SHAPE;
    for (e, &g) in g1.iter().enumerate() {
        let (bi, c) = (e / (l * h), e % h);
        assert_eq!(g == 0.0, m.values[bi * h + c] == 0.0, "element {e}");
    }
    // f32 (vectorised kernels) agrees with f64.
    let x32 = x.to_dtype(DType::F32).unwrap();
    assert!(max_diff(&v(&gelu_dropout(&x32, Some(&m)).unwrap()), &v(&ours)) < 1e-5);
    // A mask of the wrong batch is refused.
    assert!(gelu_dropout(&x, Some(&mask(2, 7))).is_err());
}

#[test]
fn sigmoid_gate_matches_unfused_autograd() {
    let y = Var::from_tensor(&randn(SHAPE, 1.0, 3)).unwrap();
    let a = Var::from_tensor(&randn(SHAPE, 3.0, 4)).unwrap();
    let b = Var::from_tensor(&randn((1, 1, 7), 1.0, 5).flatten_all().unwrap()).unwrap();
    let w = randn(SHAPE, 1.0, 6);
    for m in [None, Some(mask(SHAPE.0, SHAPE.2))] {
        let ours = sigmoid_gate(&y, &a, &b, m.as_ref()).unwrap();
        let mut theirs = (y.as_tensor()
            * candle_nn::ops::sigmoid(&a.broadcast_add(&b).unwrap()).unwrap())
        .unwrap();
        if let Some(m) = &m {
            theirs = theirs.broadcast_mul(&m.to_tensor(&y).unwrap()).unwrap();
        }
        assert!(max_diff(&v(&ours), &v(&theirs)) < 1e-14);
        let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in [("y", &y), ("a", &a), ("bias", &b)] {
            let d = max_diff(&v(g1.get(var).unwrap()), &v(g2.get(var).unwrap()));
            assert!(d < 1e-11, "{name}: {d}");
        }
        // f32 agrees with f64.
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let o32 = sigmoid_gate(&f(&y), &f(&a), &f(&b), m.as_ref()).unwrap();
        assert!(max_diff(&v(&o32), &v(&ours)) < 1e-5);
    }
    assert!(sigmoid_gate(&y, &a.narrow(2, 0, 3).unwrap(), &b, None).is_err());
    assert!(sigmoid_gate(&y, &a, &b.narrow(0, 0, 3).unwrap(), None).is_err());
}

/// The fused masked BatchNorm equals the same formula written with candle ops, forward and
/// gradients (z, γ, β), in f64.
#[test]
fn masked_batch_norm_matches_unfused_autograd() {
    let dev = Device::Cpu;
    let (n, h) = (40, 6);
    let mask: Vec<bool> = (0..n).map(|i| i % 5 != 3 && i < 33).collect();
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
}
