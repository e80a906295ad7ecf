//! Embeds the commit of the sources this binary is built from as `BENCH_BUILD_COMMIT`, so that a
//! prebuilt binary run in a checkout that has moved on still names its own sources in
//! `manifest.json` (`build_commit`; `git_commit` is the checkout's commit at run time).
//!
//! The value is `git rev-parse HEAD`, with `-dirty` when `crates/` or the workspace's Cargo files
//! have uncommitted changes, or `unknown` without git. The script reruns when `HEAD` moves (a
//! checkout or a commit) or a file under `crates/` or a workspace Cargo file changes, so the
//! value follows the compiled sources.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `git <args>` run in `dir`: its trimmed stdout, or `None` if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Asks cargo to rerun this script when `path` changes; a path that does not exist is left
/// out (cargo would rerun the script on every build).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = crate_dir.join("../..");
    let sources = [
        root.join("crates"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    for path in &sources {
        watch(path);
    }
    let commit = match git(&root, &["rev-parse", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            if let Some(git_dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
                let git_dir = PathBuf::from(git_dir);
                watch(&git_dir.join("HEAD"));
                watch(&git_dir.join("packed-refs"));
                if let Some(head_ref) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
                    watch(&git_dir.join(head_ref));
                }
            }
            let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            let paths: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
            args.extend(paths.iter().map(String::as_str));
            let dirty = git(&root, &args).is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=BENCH_BUILD_COMMIT={commit}");
}
