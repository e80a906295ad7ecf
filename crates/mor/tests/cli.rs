//! The `mor` binary on the fixture files: h2, h2-error, hinf, hsv, reduce; errors exit non-zero with one
//! line.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../../../shared/fixtures/diag-ssm");
    let dir = if shared.join("expected.json").exists() {
        shared
    } else {
        root.join("tests/fixtures/diag-ssm")
    };
    dir.join(name)
}

fn run(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mor"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs()
}

#[test]
fn cli_h2_h2_error_hsv_match_fixtures() {
    let exp = expected();
    let lti = fixture("lti.json");
    let lti = lti.to_str().unwrap();
    let red = fixture("lti_reduced.json");
    let (ok, v, _) = run(&["h2", lti]);
    assert!(
        ok && close(
            v["h2"].as_f64().unwrap(),
            exp["lti"]["h2"].as_f64().unwrap()
        )
    );
    let (ok, v, _) = run(&["h2", lti, "--horizon", "16"]);
    assert!(
        ok && close(
            v["h2"].as_f64().unwrap(),
            exp["lti"]["h2_horizon16"].as_f64().unwrap()
        )
    );
    let (ok, v, _) = run(&["h2-error", lti, red.to_str().unwrap()]);
    assert!(
        ok && close(
            v["h2_error"].as_f64().unwrap(),
            exp["lti"]["h2_error"].as_f64().unwrap()
        )
    );
    let (ok, v, _) = run(&["hsv", lti]);
    assert!(ok);
    let got = v["hsv"].as_array().unwrap();
    let want = exp["lti"]["hsv"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(close(g.as_f64().unwrap(), w.as_f64().unwrap()));
    }
}

#[test]
fn cli_reduce_writes_r_modes() {
    let dir = tempfile::tempdir().unwrap();
    for (sys, method) in [
        ("lti.json", "bt"),
        ("bidir.json", "modal"),
        ("bidir.json", "last"),
        ("lqo.json", "bt"),
    ] {
        let out = dir.path().join(format!("{method}_{sys}"));
        let (ok, v, err) = run(&[
            "reduce",
            fixture(sys).to_str().unwrap(),
            "--method",
            method,
            "--order",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{sys} {method}: {err}");
        assert_eq!(v["stable"], Value::Bool(true));
        let e = v["h2_error"].as_f64().unwrap();
        let red = mor::io::read_json(&out).unwrap();
        assert_eq!(red.n_modes(), 3);
        // The written block reproduces the reported error through `h2-error`.
        let (ok, v2, _) = run(&[
            "h2-error",
            fixture(sys).to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(ok && (v2["h2_error"].as_f64().unwrap() - e).abs() <= 1e-9 * e.max(1e-12));
    }
}

#[test]
fn cli_modal_order_option() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let args = |o: &str| {
        run(&[
            "reduce",
            fixture("lti.json").to_str().unwrap(),
            "--method",
            "modal",
            "--order",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--modal-order",
            o,
        ])
    };
    let (ok, _, err) = args("abs-lambda");
    assert!(ok, "{err}");
    let red = mor::io::read_json(&out).unwrap();
    let full = mor::io::read_json(fixture("lti.json")).unwrap();
    let mut mags: Vec<f64> = full.lambda.iter().map(|l| l.norm()).collect();
    mags.sort_by(|a, b| b.total_cmp(a));
    let kept_min = red
        .lambda
        .iter()
        .map(|l| l.norm())
        .fold(f64::INFINITY, f64::min);
    assert!((kept_min - mags[1]).abs() < 1e-15);
    let (ok, _, err) = args("nope");
    assert!(!ok && err.contains("modal-order"), "{err}");
}

#[test]
fn cli_errors_are_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let (ok, _, err) = run(&["h2", bad.to_str().unwrap()]);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("bad.json"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "h2-error",
        fixture("lti.json").to_str().unwrap(),
        fixture("lqo.json").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("shape"), "{err}");
    let (ok, _, err) = run(&[
        "reduce",
        fixture("lti.json").to_str().unwrap(),
        "--method",
        "nope",
        "--order",
        "2",
        "--out",
        dir.path().join("x.json").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("unknown method"), "{err}");
    let (ok, _, err) = run(&[
        "reduce",
        fixture("lti.json").to_str().unwrap(),
        "--method",
        "bt",
        "--order",
        "99",
        "--out",
        dir.path().join("x.json").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("r = 99"), "{err}");
    let unstable = dir.path().join("u.json");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lti.json")).unwrap()).unwrap();
    v["lambda"][1] = serde_json::json!([0.0, 1.2]);
    std::fs::write(&unstable, v.to_string()).unwrap();
    let (ok, _, err) = run(&["h2", unstable.to_str().unwrap()]);
    assert!(!ok && err.contains("unstable"), "{err}");
    // HSV need a stable block: the message names the file and the mode, once.
    let (ok, _, err) = run(&["hsv", unstable.to_str().unwrap()]);
    assert!(
        !ok && err.matches("u.json").count() == 1 && err.contains("mode 1 has |lambda| = 1.2"),
        "{err}"
    );
    // A horizon of 0 steps is an empty window, not a norm.
    let (ok, _, err) = run(&[
        "h2",
        fixture("lti.json").to_str().unwrap(),
        "--horizon",
        "0",
    ]);
    assert!(!ok && err.contains("at least 1 step"), "{err}");
}

#[test]
fn cli_hinf_brackets_the_norm_and_rejects_bad_input() {
    for name in ["lti.json", "bidir.json"] {
        let sys = fixture(name);
        let (ok, v, err) = run(&["hinf", sys.to_str().unwrap(), "--tol", "1e-4"]);
        assert!(ok, "{name}: {err}");
        let (up, lo) = (
            v["hinf_upper"].as_f64().unwrap(),
            v["hinf_lower"].as_f64().unwrap(),
        );
        assert!(
            lo > 0.0 && up >= lo && up <= lo * (1.0 + 1e-4) * (1.0 + 1e-9),
            "{name}: {v}"
        );
        assert!(v["evaluations"].as_u64().unwrap() >= 32);
    }
    let sys = fixture("lti.json");
    let (ok, _, err) = run(&["hinf", sys.to_str().unwrap(), "--tol", "0"]);
    assert!(
        !ok && err.lines().count() == 1 && err.contains("--tol"),
        "{err}"
    );
}

/// `lti.json` with `edit` applied, written into `dir` as `name`.
fn edited(dir: &std::path::Path, name: &str, edit: impl Fn(&mut Value)) -> String {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lti.json")).unwrap()).unwrap();
    edit(&mut v);
    let p = dir.join(name);
    // serde_json writes non-finite numbers as `null`; JSON has no NaN literal.
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn cli_out_of_range_numbers_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scale = |key: &'static str, f: f64| {
        move |v: &mut Value| {
            for row in v[key].as_array_mut().unwrap() {
                for z in row.as_array_mut().unwrap() {
                    for x in z.as_array_mut().unwrap() {
                        *x = serde_json::json!(x.as_f64().unwrap() * f);
                    }
                }
            }
        }
    };
    let cases = [
        // Overflowing B: formerly {"h2": 0.0}, a null H∞ bound, NoConvergence in hsv.
        (
            edited(d, "big_b.json", scale("b", 1e200)),
            "`b`[0][0] (re) = ",
            "exceeds 1e30",
        ),
        (
            edited(d, "big_c.json", scale("c", 1e40)),
            "`c`[0][0] (re) = ",
            "exceeds 1e30",
        ),
        // All-tiny B: formerly {"h2": 0.0}.
        (
            edited(d, "tiny_b.json", scale("b", 1e-200)),
            "`b` is all tiny",
            "below 1e-30",
        ),
        // Subnormal entries.
        (
            edited(d, "sub_b.json", |v| {
                v["b"][2][0][1] = serde_json::json!(1e-310)
            }),
            "`b`[2][0] (im) = 1e-310 is subnormal",
            "write 0",
        ),
        (
            edited(d, "sub_lambda.json", |v| {
                v["lambda"][3] = serde_json::json!([0.5, 4e-320])
            }),
            "`lambda`[3] (im)",
            "subnormal",
        ),
        (
            edited(d, "big_d.json", |v| {
                v["d"] = serde_json::json!([1e31, 0.0, 0.0])
            }),
            "`d`[0] = 1e31 exceeds 1e30",
            "rescale",
        ),
        // A non-finite number (written as `null` by JSON) is not a number at all.
        (
            edited(d, "nan_c.json", |v| {
                v["c"][0][1][0] = serde_json::json!(f64::NAN)
            }),
            "not a valid diag-ssm/1 document",
            "null",
        ),
    ];
    for (sys, want, also) in &cases {
        for cmd in [
            vec!["h2", sys.as_str()],
            vec!["hinf", sys.as_str()],
            vec!["hsv", sys.as_str()],
            vec!["h2-error", sys.as_str(), sys.as_str()],
        ] {
            let (ok, v, err) = run(&cmd);
            assert!(
                !ok && v.is_null() && err.trim().lines().count() == 1,
                "{cmd:?}: {v} {err}"
            );
            assert!(
                err.contains(want) && err.contains(also) && err.contains(sys.as_str()),
                "{cmd:?}: {err}"
            );
        }
    }
    // In range but overflowing inside the formula (|λ|^T of an unstable mode): an error, never
    // a JSON null or infinity.
    let fast = edited(d, "fast.json", |v| {
        v["lambda"][0] = serde_json::json!([1e20, 0.0])
    });
    let (ok, v, err) = run(&["h2", &fast, "--horizon", "64"]);
    assert!(!ok && v.is_null(), "{v}");
    assert!(
        err.contains("time-limited h2 norm of") && err.contains("shorten --horizon"),
        "{err}"
    );
    // --max-evals 0 and a non-finite --tol.
    let lti = fixture("lti.json");
    let (ok, _, err) = run(&["hinf", lti.to_str().unwrap(), "--max-evals", "0"]);
    assert!(!ok && err.contains("--max-evals 0"), "{err}");
    let (ok, _, err) = run(&["hinf", lti.to_str().unwrap(), "--tol", "inf"]);
    assert!(!ok && err.contains("--tol inf"), "{err}");
}

#[test]
fn cli_refuses_work_beyond_the_memory_limit() {
    // 20,000 modes with m = p = 1: the h2 norm's dense Gramian terms need ≈ 24 GiB, which the
    // default 8 GiB limit refuses before allocating (the file itself is small).
    let n = 20_000;
    let lambda: Vec<[f64; 2]> = (0..n).map(|i| [0.5 * (i as f64 / n as f64), 0.1]).collect();
    let v = serde_json::json!({
        "format": "diag-ssm/1",
        "lambda": lambda,
        "b": vec![[[1.0, 0.0]]; n],
        "c": [vec![[0.5, 0.0]; n]],
    });
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let sys = p.to_str().unwrap();
    let t = std::time::Instant::now();
    for cmd in [
        vec!["h2", sys],
        vec!["hsv", sys],
        vec!["h2-error", sys, sys],
    ] {
        let (ok, v, err) = run(&cmd);
        assert!(!ok && v.is_null(), "{cmd:?}: {v}");
        assert!(
            err.contains("0000 modes, m = 1, p = 1")
                && err.contains("GiB of memory, more than the limit of 8 GiB")
                && err.contains("--max-memory-gib"),
            "{cmd:?}: {err}"
        );
    }
    let out = dir.path().join("r.json");
    let (ok, _, err) = run(&[
        "reduce",
        sys,
        "--method",
        "bt",
        "--order",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("more than the limit") && !out.exists(),
        "{err}"
    );
    // The limit is an option; a lower one refuses a small block, a bad one is named.
    let lti = fixture("lti.json");
    let lti = lti.to_str().unwrap();
    let (ok, _, err) = run(&["h2", lti, "--max-memory-gib", "1e-9"]);
    assert!(
        !ok && err.contains("more than the limit of 0.000000001 GiB"),
        "{err}"
    );
    let (ok, _, err) = run(&["--max-memory-gib=-1", "h2", lti]);
    assert!(!ok && err.contains("--max-memory-gib -1"), "{err}");
    let (ok, _, _) = run(&["h2", lti, "--max-memory-gib", "1"]);
    assert!(ok);
    // Refused quickly: nothing large was allocated.
    assert!(t.elapsed().as_secs() < 60);
}
