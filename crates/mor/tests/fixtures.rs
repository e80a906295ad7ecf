//! Oracle fixtures (`diag-ssm/1` systems with brute-force expected values): h2 norms, h2 errors,
//! time-limited (horizon 16) variants and HSV must match to 1e-9 relative; invariances; BT bound.
//!
//! The fixtures are read from the shared directory `../shared/fixtures/diag-ssm` next to the
//! project root when present, and otherwise from the copy in `tests/fixtures/diag-ssm`.

use mor::{DiagBlock, balance, gram, io, modes};
use serde_json::Value;
use std::path::PathBuf;

const NAMES: [&str; 4] = ["lti", "bidir", "lqo", "bidir_lqo"];

fn fixture_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../../../shared/fixtures/diag-ssm");
    if shared.join("expected.json").exists() {
        shared
    } else {
        println!(
            "shared fixtures not found at {}; using the copy in tests/fixtures",
            shared.display()
        );
        root.join("tests/fixtures/diag-ssm")
    }
}

fn load(name: &str) -> DiagBlock {
    io::read_json(fixture_dir().join(format!("{name}.json"))).unwrap()
}

fn expected() -> Value {
    let t = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&t).unwrap()
}

fn check(what: &str, got: f64, want: f64, worst: &mut f64) {
    let rel = (got - want).abs() / want.abs();
    *worst = worst.max(rel);
    assert!(
        rel < 1e-9,
        "{what}: got {got}, expected {want} (rel {rel:.2e})"
    );
}

#[test]
fn fixture_values_match_oracle() {
    let exp = expected();
    let mut worst: f64 = 0.0;
    for name in NAMES {
        let e = &exp[name];
        let full = load(name);
        let red = load(&format!("{name}_reduced"));
        let f = |k: &str| {
            e[k].as_f64()
                .unwrap_or_else(|| panic!("{name}.{k} missing"))
        };
        check(
            &format!("{name} h2"),
            gram::h2_norm(&full, None),
            f("h2"),
            &mut worst,
        );
        check(
            &format!("{name} h2_reduced"),
            gram::h2_norm(&red, None),
            f("h2_reduced"),
            &mut worst,
        );
        check(
            &format!("{name} h2_error"),
            gram::h2_error(&full, &red, None).unwrap(),
            f("h2_error"),
            &mut worst,
        );
        check(
            &format!("{name} h2_error (three-term)"),
            gram::h2_error_three_term(&full, &red, None).unwrap(),
            f("h2_error"),
            &mut worst,
        );
        check(
            &format!("{name} h2_horizon16"),
            gram::h2_norm(&full, Some(16)),
            f("h2_horizon16"),
            &mut worst,
        );
        check(
            &format!("{name} h2_error_horizon16"),
            gram::h2_error(&full, &red, Some(16)).unwrap(),
            f("h2_error_horizon16"),
            &mut worst,
        );
        if let Some(h) = e.get("hsv") {
            let want: Vec<f64> = h
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = balance::hsv(&full).unwrap();
            assert_eq!(got.len(), want.len(), "{name}: number of HSV");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                check(&format!("{name} hsv[{k}]"), *g, *w, &mut worst);
            }
        }
    }
    println!("fixtures: max relative error {worst:.3e}");
}

/// Applies the permutation `perm` to the stored modes.
fn permute(b: &DiagBlock, perm: &[usize]) -> DiagBlock {
    modes::select_modes(b, perm)
}

#[test]
fn h2_and_hsv_invariant_under_mode_permutation() {
    for name in NAMES {
        let b = load(name);
        let n = b.n_modes();
        let perm: Vec<usize> = (0..n).map(|i| (i * 3 + 1) % n).collect();
        let mut seen = perm.clone();
        seen.sort_unstable();
        if seen != (0..n).collect::<Vec<_>>() {
            continue; // 3 not coprime with n
        }
        let pb = permute(&b, &perm);
        let (h, hp) = (gram::h2_norm(&b, None), gram::h2_norm(&pb, None));
        assert!((h - hp).abs() < 1e-13 * h, "{name}: {h} vs {hp}");
        let (t, tp) = (gram::h2_norm(&b, Some(16)), gram::h2_norm(&pb, Some(16)));
        assert!((t - tp).abs() < 1e-13 * t);
        let (s, sp) = (balance::hsv(&b).unwrap(), balance::hsv(&pb).unwrap());
        for (x, y) in s.iter().zip(&sp) {
            assert!((x - y).abs() < 1e-12 * s[0], "{name}: hsv {x} vs {y}");
        }
        // Conjugating every mode (λ, B̄, C̃ → conjugates) leaves the real system unchanged.
        let mut cb = b.clone();
        cb.lambda.iter_mut().for_each(|l| *l = l.conj());
        cb.b = cb.b.conjugate().to_owned();
        cb.c = cb.c.conjugate().to_owned();
        cb.c_rev = cb.c_rev.map(|c| c.conjugate().to_owned());
        assert!((gram::h2_norm(&cb, None) - h).abs() < 1e-13 * h);
        assert!(gram::h2_error(&b, &cb, None).unwrap() < 1e-6 * h);
    }
}

/// Largest singular value over a frequency grid of the causal transfer function difference.
fn hinf_causal(a: &DiagBlock, b: &DiagBlock, grid: usize) -> f64 {
    use mor::c64;
    let (p, m) = (a.n_outputs(), a.n_inputs());
    let resp = |blk: &DiagBlock, z: c64| {
        let mut h = faer::Mat::<c64>::zeros(p, m);
        let one = c64::new(1.0, 0.0);
        for i in 0..blk.n_modes() {
            let l = blk.lambda[i];
            for o in 0..p {
                for s in 0..m {
                    let cb = blk.c[(o, i)] * blk.b[(i, s)];
                    h[(o, s)] += cb / (one - l * z) + cb.conj() / (one - l.conj() * z);
                }
            }
        }
        h
    };
    (0..grid)
        .map(|w| {
            let z = c64::from_polar(1.0, -std::f64::consts::PI * w as f64 / (grid - 1) as f64);
            (resp(a, z) - resp(b, z)).singular_values().unwrap()[0]
        })
        .fold(0.0, f64::max)
}

#[test]
fn bt_on_fixtures_bound_holds_and_beats_given_reduction() {
    for name in ["lti", "lqo"] {
        let full = load(name);
        let given = load(&format!("{name}_reduced"));
        let r = given.n_modes();
        let (red, info) = mor::bt::bt_with_info(&full, r).unwrap();
        assert_eq!(red.block.n_modes(), r);
        let bound = red.hinf_bound.unwrap();
        let mut lin = full.clone();
        lin.linear = None;
        lin.quadratic.clear();
        let mut rlin = red.block.clone();
        rlin.linear = None;
        rlin.quadratic.clear();
        let e = hinf_causal(&lin, &rlin, 4000);
        assert!(
            e <= bound * (1.0 + 1e-9),
            "{name}: H∞ error {e} > bound {bound}"
        );
        let hs = balance::hsv(&full).unwrap();
        let q = info.real_order;
        assert!(q + info.n_real_poles + 2 * info.n_padded <= 2 * r && q + 2 >= 2 * r);
        let tail: f64 = hs[q..].iter().sum();
        assert!((bound - 2.0 * tail).abs() < 1e-9 * bound);
        // The linear-output h2 error of BT is far below the fixture's arbitrary reduction.
        let e_bt = gram::h2_error(&lin, &rlin, None).unwrap();
        let mut glin = given.clone();
        glin.linear = None;
        glin.quadratic.clear();
        let e_given = gram::h2_error(&lin, &glin, None).unwrap();
        assert!(e_bt < e_given, "{name}: bt {e_bt} vs given {e_given}");
        println!(
            "{name}: r={r} q={q} real poles {} bt h2 error (u->s) {e_bt:.4e}, H∞ {e:.4e} <= bound {bound:.4e}",
            info.n_real_poles
        );
    }
    // Bidirectional: joint BT, reported bound 4 Σ discarded joint HSV.
    let full = load("bidir");
    let red = mor::bt::bt(&full, 5).unwrap();
    let hs = balance::hsv_joint(&full).unwrap();
    let tail: f64 = hs[10..].iter().sum();
    assert!((red.hinf_bound.unwrap() - 4.0 * tail).abs() < 1e-9 * tail);
    assert!(red.h2_error < gram::h2_error(&full, &load("bidir_reduced"), None).unwrap());
}

#[test]
fn modal_and_hinf_methods_on_fixtures() {
    use mor::Method;
    use mor::reduce::{ReduceOptions, reduce_block};
    let full = load("bidir");
    let opts = ReduceOptions::default();
    for m in [
        Method::Modal,
        Method::Bt,
        Method::Last,
        Method::GlobalHinf,
        Method::UniformHinf,
    ] {
        let red = reduce_block(&full, m, 4, &opts).unwrap();
        assert_eq!(red.block.n_modes(), 4, "{m}");
        assert!(red.block.max_abs_lambda() < 1.0);
        let e = gram::h2_error(&full, &red.block, None).unwrap();
        assert!((e - red.h2_error).abs() < 1e-12 * e.max(1.0));
        assert!(
            e < gram::h2_norm(&full, None),
            "{m}: error {e} not below the norm"
        );
    }
}

#[test]
fn bad_inputs_are_rejected_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = std::fs::read_to_string(fixture_dir().join("lti.json")).unwrap();
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["c"].as_array_mut().unwrap().pop();
    let mut w: Value = serde_json::from_str(&good).unwrap();
    w["lambda"].as_array_mut().unwrap().pop();
    let e = io::read_json(write("short.json", &w.to_string()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`b` has"), "{e}");
    let e = io::read_json(write("bad.json", "{\"format\": "))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.json") && e.contains("JSON"), "{e}");
    let e = io::read_json(dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    // Unstable block: h2 refuses, horizon works.
    let mut u: Value = serde_json::from_str(&good).unwrap();
    u["lambda"][0] = serde_json::json!([1.0, 0.5]);
    let ub = io::read_json(write("unstable.json", &u.to_string())).unwrap();
    assert!(
        gram::h2_error(&ub, &ub, None)
            .unwrap_err()
            .to_string()
            .contains("unstable")
    );
    assert!(gram::h2_norm(&ub, Some(8)).is_finite());
    // Shape mismatch between full and reduced (p differs).
    let p2 = io::read_json(write("p2.json", &v.to_string())).unwrap();
    let e = gram::h2_error(&load("lti"), &p2, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape"), "{e}");
}
