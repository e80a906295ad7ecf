//! Tests of the scan op: plain loop, finite differences, chunk carry, reverse = flip, padding.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::scan::{Direction, diag_scan, reference_scan};

type C = (f64, f64);

fn rand_lambda(rng: &mut ChaCha8Rng, n: usize) -> Vec<C> {
    (0..n)
        .map(|_| {
            let r: f64 = rng.random_range(0.5..0.99);
            let th: f64 = rng.random_range(-3.0..3.0);
            (r * th.cos(), r * th.sin())
        })
        .collect()
}

fn rand_v(rng: &mut ChaCha8Rng, b: usize, l: usize, n: usize) -> Vec<Vec<Vec<C>>> {
    (0..b)
        .map(|_| {
            (0..l)
                .map(|_| {
                    (0..n)
                        .map(|_| (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)))
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn lam_tensor(l: &[C], dt: DType) -> Tensor {
    let flat: Vec<f64> = l.iter().flat_map(|&(a, b)| [a, b]).collect();
    Tensor::from_vec(flat, (l.len(), 2), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

fn v_tensor(v: &[Vec<Vec<C>>], dt: DType) -> Tensor {
    let (b, l, n) = (v.len(), v[0].len(), v[0][0].len());
    let flat: Vec<f64> = v
        .iter()
        .flatten()
        .flatten()
        .flat_map(|&(a, b)| [a, b])
        .collect();
    Tensor::from_vec(flat, (b, l, n, 2), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

mod tensor_support;
use tensor_support::{max_diff as max_abs_diff, values as to_f64};

#[test]
fn scan_equals_plain_loop_all_directions_and_dtypes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (b, l, n) = (3, 37, 5);
    let lam = rand_lambda(&mut rng, n);
    let v = rand_v(&mut rng, b, l, n);
    let lengths = [37usize, 20, 1];
    let lengths_u32: Vec<u32> = lengths.iter().map(|&x| x as u32).collect();
    for dir in [Direction::Forward, Direction::Reverse, Direction::Both] {
        let want: Vec<f64> = reference_scan(&lam, &v, &lengths, dir)
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
            .flat_map(|(a, b)| [a, b])
            .collect();
        for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let x = diag_scan(
                &lam_tensor(&lam, dt),
                &v_tensor(&v, dt),
                Some(&lengths_u32),
                dir,
                None,
            )
            .unwrap();
            assert_eq!(x.dims(), [b, l, dir.n_dirs(), n, 2]);
            let err = max_abs_diff(&to_f64(&x), &want);
            assert!(err < tol, "{dir:?} {dt:?}: max error {err}");
        }
    }
}

#[test]
fn padded_positions_are_zero_and_padding_does_not_leak() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (l, n) = (16, 3);
    let lam = rand_lambda(&mut rng, n);
    let v = rand_v(&mut rng, 1, l, n);
    let mut v2 = v.clone();
    for row in v2[0].iter_mut().skip(9) {
        row.fill((100.0, -50.0));
    }
    let lam_t = lam_tensor(&lam, DType::F64);
    let x1 = diag_scan(
        &lam_t,
        &v_tensor(&v, DType::F64),
        Some(&[9]),
        Direction::Both,
        None,
    )
    .unwrap();
    let x2 = diag_scan(
        &lam_t,
        &v_tensor(&v2, DType::F64),
        Some(&[9]),
        Direction::Both,
        None,
    )
    .unwrap();
    assert_eq!(max_abs_diff(&to_f64(&x1), &to_f64(&x2)), 0.0);
    let tail = to_f64(&x1.narrow(1, 9, l - 9).unwrap());
    assert!(tail.iter().all(|&x| x == 0.0));
    let head = to_f64(&x1.narrow(1, 0, 9).unwrap());
    assert!(head.iter().any(|&x| x != 0.0));
}

#[test]
fn reverse_scan_equals_forward_scan_of_flipped_sequence() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (b, l, n) = (2, 25, 4);
    let lam = rand_lambda(&mut rng, n);
    let v = rand_v(&mut rng, b, l, n);
    let lengths = [25u32, 11];
    let rev = to_f64(
        &diag_scan(
            &lam_tensor(&lam, DType::F64),
            &v_tensor(&v, DType::F64),
            Some(&lengths),
            Direction::Reverse,
            None,
        )
        .unwrap(),
    );
    // Flip each sequence within its true length, run forward, flip back.
    let mut flipped = v.clone();
    for (bi, &len) in lengths.iter().enumerate() {
        let len = len as usize;
        for k in 0..len {
            flipped[bi][k] = v[bi][len - 1 - k].clone();
        }
    }
    let fwd = to_f64(
        &diag_scan(
            &lam_tensor(&lam, DType::F64),
            &v_tensor(&flipped, DType::F64),
            Some(&lengths),
            Direction::Forward,
            None,
        )
        .unwrap(),
    );
    for (bi, &len) in lengths.iter().enumerate() {
        let len = len as usize;
        for k in 0..l {
            for j in 0..2 * n {
                let a = rev[(bi * l + k) * 2 * n + j];
                let b = if k < len {
                    fwd[(bi * l + (len - 1 - k)) * 2 * n + j]
                } else {
                    0.0
                };
                assert!((a - b).abs() < 1e-12, "b={bi} k={k}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn chunked_scan_with_carried_state_equals_full_scan() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (b, l, n) = (2, 30, 3);
    let lam = rand_lambda(&mut rng, n);
    let v = rand_v(&mut rng, b, l, n);
    let lam_t = lam_tensor(&lam, DType::F64);
    let v_t = v_tensor(&v, DType::F64);
    for dir in [Direction::Forward, Direction::Reverse] {
        let full = diag_scan(&lam_t, &v_t, None, dir, None).unwrap();
        let cuts = [0usize, 7, 8, 19, 30];
        let mut pieces: Vec<Tensor> = Vec::new();
        let mut carry: Option<Tensor> = None;
        let spans: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        let order: Vec<(usize, usize)> = if dir == Direction::Reverse {
            spans.iter().rev().copied().collect()
        } else {
            spans.clone()
        };
        for (a, e) in order {
            let chunk = v_t.narrow(1, a, e - a).unwrap();
            let x = diag_scan(&lam_t, &chunk, None, dir, carry.as_ref()).unwrap();
            // carry = state after the last processed step: last row forward, first row reverse.
            let last = if dir == Direction::Reverse {
                0
            } else {
                e - a - 1
            };
            carry = Some(x.narrow(1, last, 1).unwrap().squeeze(1).unwrap());
            pieces.push(x);
        }
        if dir == Direction::Reverse {
            pieces.reverse();
        }
        let chunked = Tensor::cat(&pieces, 1).unwrap();
        let err = max_abs_diff(&to_f64(&chunked), &to_f64(&full));
        assert!(err < 1e-12, "{dir:?}: {err}");
    }
}

/// Central finite differences of `L = Σ w ⊙ x` in f64 against the op's backward, for λ̄, v and
/// the initial state, both directions, with padding.
#[test]
fn gradients_match_central_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (b, l, n) = (2, 9, 3);
    let lengths = [9u32, 6];
    let lam = rand_lambda(&mut rng, n);
    let v = rand_v(&mut rng, b, l, n);
    for dir in [Direction::Forward, Direction::Reverse, Direction::Both] {
        let d = dir.n_dirs();
        let w: Vec<f64> = (0..b * l * d * n * 2)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let w_t = Tensor::from_vec(w, (b, l, d, n, 2), &Device::Cpu).unwrap();
        let init: Vec<f64> = (0..b * d * n * 2)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let init_t = Tensor::from_vec(init, (b, d, n, 2), &Device::Cpu).unwrap();
        let lam_v = Var::from_tensor(&lam_tensor(&lam, DType::F64)).unwrap();
        let v_v = Var::from_tensor(&v_tensor(&v, DType::F64)).unwrap();
        let i_v = Var::from_tensor(&init_t).unwrap();
        let loss = |lam: &Tensor, v: &Tensor, init: &Tensor| -> Tensor {
            diag_scan(lam, v, Some(&lengths), dir, Some(init))
                .unwrap()
                .mul(&w_t)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(&lam_v, &v_v, &i_v).backward().unwrap();
        let eps = 1e-6;
        let vars: [(&str, &Var); 3] = [("lambda", &lam_v), ("v", &v_v), ("init", &i_v)];
        for (which, (name, var)) in vars.iter().enumerate() {
            let analytic = to_f64(grads.get(var).unwrap());
            let base = to_f64(var.as_tensor());
            let shape = var.as_tensor().shape().clone();
            let mut worst: f64 = 0.0;
            for i in 0..base.len() {
                let eval = |delta: f64| -> f64 {
                    let mut p = base.clone();
                    p[i] += delta;
                    let t = Tensor::from_vec(p, shape.clone(), &Device::Cpu).unwrap();
                    let (a, bb, c) = match which {
                        0 => (t, v_v.as_tensor().clone(), i_v.as_tensor().clone()),
                        1 => (lam_v.as_tensor().clone(), t, i_v.as_tensor().clone()),
                        _ => (lam_v.as_tensor().clone(), v_v.as_tensor().clone(), t),
                    };
                    loss(&a, &bb, &c).to_scalar::<f64>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                let err = (fd - analytic[i]).abs() / (1.0 + fd.abs());
                worst = worst.max(err);
            }
            assert!(worst < 1e-7, "{dir:?} grad {name}: relative error {worst}");
            assert!(
                analytic.iter().any(|&g| g != 0.0),
                "{dir:?} grad {name} all zero"
            );
        }
    }
}

/// The 2-input form (no initial state) has the same gradients as the 3-input form with zeros,
/// and f32 gradients agree with f64 ones.
#[test]
fn gradients_without_init_and_in_f32() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (b, l, n) = (2, 50, 4);
    let lengths = [50u32, 31];
    let lam = rand_lambda(&mut rng, n);
    let v = rand_v(&mut rng, b, l, n);
    let w: Vec<f64> = (0..b * l * 2 * n * 2)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut results = Vec::new();
    for dt in [DType::F64, DType::F32] {
        let w_t = Tensor::from_vec(w.clone(), (b, l, 2, n, 2), &Device::Cpu)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let lam_v = Var::from_tensor(&lam_tensor(&lam, dt)).unwrap();
        let v_v = Var::from_tensor(&v_tensor(&v, dt)).unwrap();
        let x = diag_scan(&lam_v, &v_v, Some(&lengths), Direction::Both, None).unwrap();
        let g = x.mul(&w_t).unwrap().sum_all().unwrap().backward().unwrap();
        results.push((to_f64(g.get(&lam_v).unwrap()), to_f64(g.get(&v_v).unwrap())));
    }
    let scale = results[0].0.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
    assert!(max_abs_diff(&results[0].0, &results[1].0) < 1e-4 * scale);
    assert!(max_abs_diff(&results[0].1, &results[1].1) < 1e-4);
}
