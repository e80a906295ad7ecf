//! The one-node SSM op (`s5::ssm_op::ssm_apply`) against the same map built from candle ops and
//! the scan op (forward and autograd, f64), against central finite differences, and in f32.

use candle_core::{DType, Device, Tensor, Var};
use s5::scan::{Direction, diag_scan};
use s5::ssm_op::ssm_apply;

mod tensor_support;
use tensor_support::{central_difference, max_diff, uniform, values as v};

/// A stable Λ̄ `[n, 2]`: magnitudes in [0.5, 0.99], spread phases.
fn lambda_bar(n: usize) -> Tensor {
    let vals: Vec<f64> = (0..n)
        .flat_map(|j| {
            let r = 0.5 + 0.49 * j as f64 / n.max(1) as f64;
            let phi = 0.3 + 1.1 * j as f64;
            [r * phi.cos(), r * phi.sin()]
        })
        .collect();
    Tensor::from_vec(vals, (n, 2), &Device::Cpu).unwrap()
}

// 3 × 300 rows span several parallel work units; H·2n·rows is above the threshold where the
// projection runs gemm on the rayon pool, the parameter-gradient products below it.
const B: usize = 3;
const L: usize = 300;
const H: usize = 8;
const N: usize = 6;
const LENGTHS: [u32; 3] = [300, 137, 1];

struct Inputs {
    u: Var,
    lam: Var,
    wb: Var,
    wc: Var,
    d: Var,
}

fn inputs(dir: Direction) -> Inputs {
    let dn = dir.n_dirs() * 2 * N;
    Inputs {
        u: Var::from_tensor(&uniform(&[B, L, H], 1.0, 1)).unwrap(),
        lam: Var::from_tensor(&lambda_bar(N)).unwrap(),
        wb: Var::from_tensor(&uniform(&[H, 2 * N], 0.5, 2)).unwrap(),
        wc: Var::from_tensor(&uniform(&[dn, H], 0.5, 3)).unwrap(),
        d: Var::from_tensor(&uniform(&[H], 1.0, 4)).unwrap(),
    }
}

/// The same map from candle ops: reshape, matmul, scan, matmul, feed-through.
fn unfused(x: &Inputs, dir: Direction) -> Tensor {
    let vv =
        x.u.reshape((B * L, H))
            .unwrap()
            .matmul(&x.wb)
            .unwrap()
            .reshape((B, L, N, 2))
            .unwrap();
    let s = diag_scan(&x.lam, &vv, Some(&LENGTHS), dir, None)
        .unwrap()
        .reshape((B * L, dir.n_dirs() * 2 * N))
        .unwrap();
    let y = s.matmul(&x.wc).unwrap().reshape((B, L, H)).unwrap();
    (y + x.u.broadcast_mul(&x.d).unwrap()).unwrap()
}

fn fused(x: &Inputs, dir: Direction) -> Tensor {
    ssm_apply(&x.u, &x.lam, &x.wb, &x.wc, &x.d, &LENGTHS, dir).unwrap()
}

#[test]
fn ssm_op_matches_unfused_autograd_in_both_directions() {
    for dir in [Direction::Both, Direction::Forward] {
        let x = inputs(dir);
        let w = uniform(&[B, L, H], 1.0, 9);
        let ours = fused(&x, dir);
        let theirs = unfused(&x, dir);
        let e = max_diff(&v(&ours), &v(&theirs));
        assert!(e < 1e-12, "{dir:?} forward: {e}");
        let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in [
            ("u", &x.u),
            ("lambda_bar", &x.lam),
            ("w_b", &x.wb),
            ("w_c", &x.wc),
            ("D", &x.d),
        ] {
            let a = v(g1.get(var).unwrap());
            let b = v(g2.get(var).unwrap());
            let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let e = max_diff(&a, &b) / scale;
            assert!(e < 1e-11, "{dir:?} grad {name}: relative {e}");
            assert!(
                a.iter().any(|&g| g != 0.0),
                "{dir:?} grad {name} is all zero"
            );
        }
    }
}

#[test]
fn ssm_op_gradients_match_central_differences() {
    let dir = Direction::Both;
    let x = inputs(dir);
    let w = uniform(&[B, L, H], 1.0, 11);
    let loss = |x: &Inputs| -> f64 {
        fused(x, dir)
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = fused(&x, dir)
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let eps = 1e-6;
    // A few coordinates of every argument (flat indices).
    let cases: [(&str, &Var, &[usize]); 5] = [
        ("u", &x.u, &[0, 5, 137 * H + 3, L * H + 136 * H, 2 * L * H]),
        ("lambda_bar", &x.lam, &[0, 1, 7, 11]),
        ("w_b", &x.wb, &[0, 13, 95]),
        ("w_c", &x.wc, &[0, 50, 24 * H - 1]),
        ("D", &x.d, &[0, 7]),
    ];
    for (name, var, idx) in cases {
        let g = v(grads.get(var).unwrap());
        for &i in idx {
            let fd = central_difference(var, i, eps, || loss(&x));
            let tol = 1e-6 * (1.0 + fd.abs());
            assert!(
                (fd - g[i]).abs() < tol,
                "{name}[{i}]: autograd {} vs fd {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn ssm_op_in_f32_matches_f64() {
    let dir = Direction::Both;
    let x = inputs(dir);
    let y64 = v(&fused(&x, dir));
    let f = |t: &Var| t.as_tensor().to_dtype(DType::F32).unwrap();
    let y32 = ssm_apply(
        &f(&x.u),
        &f(&x.lam),
        &f(&x.wb),
        &f(&x.wc),
        &f(&x.d),
        &LENGTHS,
        dir,
    )
    .unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    let scale = y64.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let e = max_diff(&v(&y32), &y64) / scale;
    assert!(e < 1e-5, "f32 vs f64: relative {e}");
}

#[test]
fn ssm_op_rejects_bad_shapes_lengths_and_dtypes() {
    let dir = Direction::Both;
    let x = inputs(dir);
    let call = |u: &Tensor, wc: &Tensor, lens: &[u32]| {
        ssm_apply(u, &x.lam, &x.wb, wc, &x.d, lens, dir).map_err(|e| e.to_string())
    };
    // w_c of a single direction for a bidirectional op.
    let wc1 = x.wc.narrow(0, 0, 2 * N).unwrap();
    assert!(call(&x.u, &wc1, &LENGTHS).is_err());
    // A length beyond the padded length, and a wrong number of lengths.
    assert!(call(&x.u, &x.wc, &[300, 301, 1]).is_err());
    assert!(call(&x.u, &x.wc, &[300, 1]).is_err());
    // Mixed dtypes.
    let u32_ = x.u.to_dtype(DType::F32).unwrap();
    let err = call(&u32_, &x.wc, &LENGTHS).unwrap_err();
    assert!(err.contains("dtype"), "{err}");
}

#[test]
fn ssm_op_without_gradients_equals_the_op() {
    // Untracked inputs take the per-sequence inference path; tracked ones the autograd op.
    for dir in [Direction::Both, Direction::Forward] {
        let x = inputs(dir);
        let op = v(&fused(&x, dir));
        for dt in [DType::F64, DType::F32] {
            let f = |t: &Var| t.as_tensor().detach().to_dtype(dt).unwrap();
            let y = ssm_apply(
                &f(&x.u),
                &f(&x.lam),
                &f(&x.wb),
                &f(&x.wc),
                &f(&x.d),
                &LENGTHS,
                dir,
            )
            .unwrap();
            assert!(!y.track_op());
            let tol = if dt == DType::F64 { 1e-12 } else { 1e-5 };
            let scale = op.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let e = max_diff(&v(&y), &op) / scale;
            assert!(e < tol, "{dir:?} {dt:?}: relative {e}");
        }
    }
}
