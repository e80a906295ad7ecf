//! The hub path through `HF_HOME`, offline: a single test in its own binary, because it sets an
//! environment variable.

mod common;

use lra::{DataConfig, Fetchers, Imdb, Origin, Source};

#[test]
fn hf_home_cache_is_found_through_the_environment() {
    let root = tempfile::tempdir().unwrap();
    let hf_home = root.path().join("hf-home");
    let cache = hf_hub::Cache::new(hf_home.join("hub"));
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    cache
        .dataset("stanfordnlp/imdb".into())
        .create_ref(commit)
        .unwrap();
    let snapshot = hf_home
        .join("hub/datasets--stanfordnlp--imdb/snapshots")
        .join(commit);
    let (train, test) = common::fixture_splits();
    lra::write_split(&snapshot.join(lra::TRAIN_FILE), &train).unwrap();
    lra::write_split(&snapshot.join(lra::TEST_FILE), &test).unwrap();
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var("HF_HOME", &hf_home) };
    let cfg = DataConfig {
        source: Source::Hf,
        dir: root.path().join("data"),
        ..Default::default()
    };
    let imdb = Imdb::load_with(&cfg, &Fetchers::from_env()).unwrap();
    assert_eq!(imdb.origin, Origin::HubCache);
    assert_eq!(imdb.train, train);
    assert_eq!(imdb.test, test);
    assert!(imdb.files[0].starts_with(&hf_home));
}
