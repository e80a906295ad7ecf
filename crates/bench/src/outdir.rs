//! Output directories that `bench` writes whole (`compress --out`, `recalibrate-bn --out`,
//! `swa --out`), the run-directory lock, and [`RunGuard`]: a run directory created if missing,
//! checked writable, locked, and removed again if the run leaves it empty.
//!
//! An output directory is written completely into a temporary sibling `.<name>.tmp-<pid>` in the
//! destination's parent and then swapped into place by rename, so a reader (or a kill) never
//! leaves a half-written checkpoint at the destination. An existing destination is replaced only
//! if it is one this tool wrote for the same command: every output directory holds a marker file
//! [`MARKER`] naming the command. Anything else (a directory of the user's, the source
//! checkpoint, a directory containing or inside a source checkpoint, a file) is refused with what
//! was found and how to proceed. Temporary (`.<name>.tmp-<pid>`) and replaced
//! (`.<name>.old-<pid>`) siblings left by a process that no longer runs (e.g. killed with
//! `kill -9`) are cleaned up by the next write of that destination.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Marker file in every output directory `bench` writes: JSON naming the command that wrote it.
pub const MARKER: &str = ".bench-output";

/// Lock file of a run directory, held while a process writes the run (see [`RunLock`]).
pub const LOCK_FILE: &str = ".lock";

/// Content of [`MARKER`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Marker {
    /// The `bench` subcommand that wrote the directory (`compress`, `recalibrate-bn`, `swa`).
    pub command: String,
    /// Version of `bench` that wrote it.
    pub version: String,
}

/// Reads the marker of `dir`, if it has a readable one.
pub fn read_marker(dir: &Path) -> Option<Marker> {
    serde_json::from_slice(&fs::read(dir.join(MARKER)).ok()?).ok()
}

fn write_marker(dir: &Path, command: &str) -> Result<()> {
    let m = Marker {
        command: command.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let p = dir.join(MARKER);
    fs::write(&p, serde_json::to_vec_pretty(&m)?)
        .with_context(|| format!("cannot write {}", p.display()))
}

/// Whether process `pid` is running (on systems without `/proc`, every process counts as
/// running, so nothing of another process is ever cleaned up there).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// `Some(pid)` if `file_name` is `.<name>.<kind>-<pid>`.
fn sibling_pid(file_name: &str, name: &str, kind: &str) -> Option<u32> {
    file_name
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_prefix(kind)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// Whether `dir` is empty.
fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// `path` made absolute with symbolic links resolved as far as it exists (the rest appended).
fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut tail = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for t in tail.iter().rev() {
                out.push(t);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(p), Some(n)) => {
                tail.push(n.to_os_string());
                cur = p;
            }
            _ => return abs,
        }
    }
}

/// Removes the stale temporary and replaced siblings of `parent/name` left by processes that no
/// longer run. A stale replaced sibling (`.<name>.old-<pid>`: the process died between moving
/// the previous output aside and moving the new one in) is moved back if the destination is
/// missing, else removed. Only directories that carry the [`MARKER`] (or are empty) are removed.
/// Returns the paths removed or restored.
pub fn clean_stale_siblings(parent: &Path, name: &str) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(parent) else {
        return done;
    };
    let dest = parent.join(name);
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let (pid, old) = match (
            sibling_pid(&file_name, name, "tmp"),
            sibling_pid(&file_name, name, "old"),
        ) {
            (Some(p), _) => (p, false),
            (_, Some(p)) => (p, true),
            _ => continue,
        };
        if process_alive(pid) || !path.is_dir() {
            continue;
        }
        if !(path.join(MARKER).exists() || is_empty_dir(&path)) {
            continue;
        }
        if old && !dest.exists() {
            if fs::rename(&path, &dest).is_ok() {
                tracing::warn!(
                    "restored {} from {} (left by an interrupted process {pid})",
                    dest.display(),
                    path.display()
                );
                done.push(dest.clone());
            }
        } else if fs::remove_dir_all(&path).is_ok() {
            tracing::info!(
                "removed {} (left by an interrupted process {pid})",
                path.display()
            );
            done.push(path);
        }
    }
    done
}

/// An output directory being written: files go into [`OutDir::path`] (the temporary sibling);
/// [`OutDir::commit`] moves it into place. Dropped without a commit, the temporary sibling is
/// removed.
#[derive(Debug)]
pub struct OutDir {
    dest: PathBuf,
    tmp: PathBuf,
    command: String,
    committed: bool,
}

impl OutDir {
    /// Checks that `dest` may be written by `command` (see the module documentation; `sources`
    /// are the checkpoint directories the output is made from, which are never replaced), cleans
    /// stale siblings and creates the empty temporary sibling (with its marker).
    ///
    /// # Errors
    /// If `dest` is a file, a source checkpoint, contains or is inside one, or is a non-empty
    /// directory not written by `command`; or if the parent cannot be written.
    pub fn prepare(dest: &Path, command: &str, sources: &[&Path]) -> Result<OutDir> {
        let name = dest
            .file_name()
            .filter(|n| *n != "." && *n != "..")
            .with_context(|| {
                format!(
                    "--out {}: the output path has no directory name (name a new directory, e.g. \
                     `--out out/model`)",
                    dest.display()
                )
            })?
            .to_string_lossy()
            .into_owned();
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let dest_abs = resolve(dest);
        for src in sources {
            let src_abs = resolve(src);
            let relation = if dest_abs == src_abs {
                Some(("is", "it would replace the model this command reads"))
            } else if src_abs.starts_with(&dest_abs) {
                Some(("contains", "it would replace the model this command reads"))
            } else if dest_abs.starts_with(&src_abs) {
                Some((
                    "is inside",
                    "an output never goes into the checkpoint it is made from",
                ))
            } else {
                None
            };
            if let Some((relation, why)) = relation {
                bail!(
                    "--out {} {relation} the source checkpoint {}; refusing to write there \
                     ({why}); nothing was changed: choose a new directory for --out",
                    dest.display(),
                    src.display()
                );
            }
        }
        check_replaceable(dest, command)?;
        fs::create_dir_all(&parent).with_context(|| {
            format!(
                "cannot create {} (is it writable? choose another --out)",
                parent.display()
            )
        })?;
        clean_stale_siblings(&parent, &name);
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            // Ours by name and pid: a leftover of this very process.
            fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        fs::create_dir(&tmp).with_context(|| {
            format!(
                "cannot create {} (is {} writable? choose another --out)",
                tmp.display(),
                parent.display()
            )
        })?;
        let out = OutDir {
            dest: dest.to_path_buf(),
            tmp,
            command: command.to_string(),
            committed: false,
        };
        write_marker(&out.tmp, command)?;
        Ok(out)
    }

    /// The temporary directory to write the output's files into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Moves the finished output into place, replacing a previous output of the same command.
    ///
    /// # Errors
    /// If the destination changed meanwhile into something that may not be replaced, or a rename
    /// fails (the previous output is then put back).
    pub fn commit(mut self) -> Result<PathBuf> {
        check_replaceable(&self.dest, &self.command)?;
        let parent = self.tmp.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.dest.exists() {
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            fs::rename(&self.dest, &old)
                .with_context(|| format!("cannot move {} aside", self.dest.display()))?;
            if let Err(e) = fs::rename(&self.tmp, &self.dest) {
                let _ = fs::rename(&old, &self.dest);
                return Err(e).with_context(|| format!("cannot create {}", self.dest.display()));
            }
            if let Err(e) = fs::remove_dir_all(&old) {
                tracing::warn!("cannot remove the replaced {}: {e}", old.display());
            }
        } else {
            fs::rename(&self.tmp, &self.dest)
                .with_context(|| format!("cannot create {}", self.dest.display()))?;
        }
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Whether `dest` may be replaced by `command`: missing, an empty directory, or a directory
/// whose [`MARKER`] names `command`.
fn check_replaceable(dest: &Path, command: &str) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(dest) else {
        return Ok(());
    };
    if !meta.is_dir() {
        let what = if meta.file_type().is_symlink() {
            "a symbolic link"
        } else {
            "a file"
        };
        bail!(
            "--out {} is {what}, not a directory this command wrote; refusing to replace it \
             (choose a new directory for --out, or remove it yourself)",
            dest.display()
        );
    }
    if is_empty_dir(dest) {
        return Ok(());
    }
    match read_marker(dest) {
        Some(m) if m.command == command => Ok(()),
        Some(m) => bail!(
            "--out {} holds the output of `bench {}`, not of `bench {command}`; refusing to \
             replace it (choose a new directory for --out, or remove it yourself)",
            dest.display(),
            m.command
        ),
        None => bail!(
            "--out {} exists and was not written by `bench {command}` (no {MARKER} marker in \
             it); refusing to replace it, nothing was changed (choose a new directory for --out, \
             or remove it yourself if its contents are not needed)",
            dest.display()
        ),
    }
}

/// An exclusive lock on a run directory (`<run>/.lock`, an advisory file lock released when the
/// process ends, however it ends), so that two processes never write one run's results at once.
/// The lock file names the holder's pid and command; it is removed on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    _file: fs::File,
}

impl RunLock {
    /// Takes the lock of run directory `dir` (which must exist) for `what` (e.g. `sweep`).
    ///
    /// # Errors
    /// If another process holds it: the message names its pid and command.
    pub fn acquire(dir: &Path, what: &str) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        // Retry when the holder removed the file between our open and lock (then we hold a lock
        // on an unlinked file, which protects nothing).
        for _ in 0..10 {
            let mut file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open the run lock {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let holder = if holder.is_empty() {
                        "another process".to_string()
                    } else {
                        holder.to_string()
                    };
                    bail!(
                        "the run directory {} is in use by {holder} (lock {}); two processes \
                         writing one run lose rows: wait for it to finish or stop it, or give \
                         this run another `name`",
                        dir.display(),
                        path.display()
                    );
                }
                Err(fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                    tracing::warn!(
                        "this file system cannot lock {} ({e}); running without the run lock",
                        path.display()
                    );
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e)
                        .with_context(|| format!("cannot lock the run lock {}", path.display()));
                }
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0)?;
            file.rewind()?;
            write!(
                file,
                "pid {} (`bench {what}`, started {})",
                std::process::id(),
                crate::manifest::now_rfc3339()
            )?;
            file.flush()?;
            return Ok(RunLock { path, _file: file });
        }
        bail!(
            "cannot take the run lock {} (it keeps disappearing)",
            path.display()
        )
    }
}

/// Removes the temporary files that atomic writes (`.<name>.<pid>.tmp`, `.<name>.tmp-<pid>`,
/// and the figures' `.<name>.<pid>.tmp.png`) of processes that no longer run left directly in
/// `dir` (call it while holding `dir`'s [`RunLock`]). Returns the files removed.
pub fn clean_stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return done;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let pid = if let Some(rest) = n
            .strip_suffix(".tmp")
            .or_else(|| n.strip_suffix(".tmp.png"))
        {
            rest.rsplit_once('.').map(|(_, p)| p)
        } else {
            n.rsplit_once(".tmp-").map(|(_, p)| p)
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !process_alive(pid) && fs::remove_file(e.path()).is_ok() {
            done.push(e.path());
        }
    }
    done
}

#[cfg(unix)]
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &fs::File, path: &Path) -> bool {
    path.exists()
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked; a process that opened the old file before this retries.
        let _ = fs::remove_file(&self.path);
    }
}

/// Checks that `dir` can be written (creates it).
pub fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the output directory {} (choose a writable `out_dir`)",
            dir.display()
        )
    })?;
    crate::results::write_atomic(&dir.join(".write-test"), b"ok")?;
    let _ = std::fs::remove_file(dir.join(".write-test"));
    Ok(())
}

/// A run directory this run created, removed when the run ends with it still empty (a run that
/// fails before writing anything leaves no trace; `remove_dir` never removes a non-empty one).
pub struct RemoveIfEmpty(Option<PathBuf>);

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A run directory locked for writing ([`crate::outdir::RunLock`]), created if missing and
/// removed again at the end if the run left it empty. Fields drop in order: the lock file first.
pub struct RunGuard {
    _lock: crate::outdir::RunLock,
    _cleanup: RemoveIfEmpty,
}

impl RunGuard {
    /// Creates (if missing), checks writable and locks `dir` for `what`.
    pub fn acquire(dir: &Path, what: &str) -> Result<RunGuard> {
        let cleanup = RemoveIfEmpty((!dir.exists()).then(|| dir.to_path_buf()));
        ensure_writable(dir)?;
        let lock = crate::outdir::RunLock::acquire(dir, what)?;
        // Temporaries of atomic writes by a killed run (results.csv, manifest.json, ...).
        crate::outdir::clean_stale_temp_files(dir);
        Ok(RunGuard {
            _lock: lock,
            _cleanup: cleanup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_names() {
        assert_eq!(sibling_pid(".m.tmp-12", "m", "tmp"), Some(12));
        assert_eq!(sibling_pid(".m.old-12", "m", "old"), Some(12));
        assert_eq!(sibling_pid(".m.tmp-12", "n", "tmp"), None);
        assert_eq!(sibling_pid(".m.tmp-x", "m", "tmp"), None);
        assert_eq!(sibling_pid(".mm.tmp-1", "m", "tmp"), None);
    }

    #[test]
    fn replace_rules() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("model");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("model.safetensors"), b"x").unwrap();
        // the source, its parent, a directory inside it
        for d in [src.clone(), t.path().to_path_buf(), src.join("sub")] {
            let e = OutDir::prepare(&d, "compress", &[&src]).unwrap_err();
            assert!(format!("{e}").contains("source checkpoint"), "{e}");
        }
        // a user directory
        let user = t.path().join("user");
        fs::create_dir_all(&user).unwrap();
        fs::write(user.join("notes.txt"), b"keep").unwrap();
        let e = OutDir::prepare(&user, "compress", &[&src]).unwrap_err();
        assert!(format!("{e}").contains("not written by"), "{e}");
        // a new directory, then replaced by the same command, refused by another
        let out = t.path().join("out");
        let o = OutDir::prepare(&out, "compress", &[&src]).unwrap();
        fs::write(o.path().join("a"), b"1").unwrap();
        o.commit().unwrap();
        let o = OutDir::prepare(&out, "compress", &[&src]).unwrap();
        fs::write(o.path().join("b"), b"2").unwrap();
        o.commit().unwrap();
        assert!(!out.join("a").exists() && out.join("b").exists());
        assert!(OutDir::prepare(&out, "swa", &[&src]).is_err());
        // nothing left beside it
        let names: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
}
