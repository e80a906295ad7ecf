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
