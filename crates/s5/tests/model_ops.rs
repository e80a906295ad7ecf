//! Fused gate ops against candle's unfused ops (forward and autograd) and finite differences.

use candle_core::{DType, Device, Tensor, Var};
use s5::ops::{gelu_tanh, mul_sigmoid};

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

#[test]
fn gelu_tanh_matches_candle_and_finite_differences() {
    let dev = Device::Cpu;
    // Large enough to span several parallel chunks.
    let x = Var::from_tensor(&(Tensor::randn(0f64, 2.0, (3, 20000), &dev).unwrap())).unwrap();
    let w = Tensor::randn(0f64, 1.0, (3, 20000), &dev).unwrap();
    let ours = gelu_tanh(&x).unwrap();
    let theirs = x.gelu().unwrap();
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
    // Central differences on a few points.
    let xs = v(&x);
    let ws = v(&w);
    for i in [0usize, 17, 30000, 59999] {
        let f = |d: f64| v(&gelu_tanh(&Tensor::new(&[xs[i] + d], &dev).unwrap()).unwrap())[0];
        let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
        assert!((fd * ws[i] - g1[i]).abs() < 1e-7, "i={i}");
    }
    // f32 forward agrees with f64.
    let x32 = x.to_dtype(DType::F32).unwrap();
    assert!(max_diff(&v(&gelu_tanh(&x32).unwrap()), &v(&ours)) < 1e-5);
}

#[test]
fn mul_sigmoid_matches_unfused_autograd() {
    let dev = Device::Cpu;
    let y = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 7, 5000), &dev).unwrap()).unwrap();
    let a = Var::from_tensor(&Tensor::randn(0f64, 3.0, (2, 7, 5000), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f64, 1.0, (2, 7, 5000), &dev).unwrap();
    let ours = mul_sigmoid(&y, &a).unwrap();
    let theirs = (y.as_tensor() * candle_nn::ops::sigmoid(&a).unwrap()).unwrap();
    assert!(max_diff(&v(&ours), &v(&theirs)) < 1e-14);
    let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = theirs
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for var in [&y, &a] {
        let d = max_diff(&v(g1.get(var).unwrap()), &v(g2.get(var).unwrap()));
        assert!(d < 1e-12, "{d}");
    }
    assert!(mul_sigmoid(&y, &a.narrow(2, 0, 10).unwrap()).is_err());
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
    let (ours, mean, var) = s5::ops::masked_batch_norm(&z, &mask, &g, &b, 1e-5).unwrap();
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
