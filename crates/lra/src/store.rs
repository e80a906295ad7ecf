//! The one on-disk format: parquet files in the Hugging Face `stanfordnlp/imdb` layout
//! (`plain_text/{train,test}-00000-of-00001.parquet`, columns `text: string`, `label: int64`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

/// Path of the train split inside a dataset folder (Hugging Face `stanfordnlp/imdb` layout).
pub const TRAIN_FILE: &str = "plain_text/train-00000-of-00001.parquet";
/// Path of the test split inside a dataset folder (Hugging Face `stanfordnlp/imdb` layout).
pub const TEST_FILE: &str = "plain_text/test-00000-of-00001.parquet";

/// One split of the IMDb reviews: `texts[i]` (raw UTF-8 with its `<br />` tags) has label `labels[i]`
/// (0 = negative, 1 = positive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Review texts, `[n]`.
    pub texts: Vec<String>,
    /// Labels, `[n]`, 0 = negative, 1 = positive.
    pub labels: Vec<u8>,
}

impl Split {
    /// Number of reviews.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// `true` when the split has no reviews.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Number of positive reviews (label 1).
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l == 1).count()
    }
}

/// Writes `split` as parquet (`text: string`, `label: int64`, snappy) to `path`, atomically:
/// the data goes to a temporary file next to `path` that is renamed over it only when complete.
///
/// Errors: [`Error::Io`] or [`Error::Parquet`] naming the file; [`Error::Invalid`] when the text and
/// label counts differ.
pub fn write_split(path: &Path, split: &Split) -> Result<()> {
    let tmp = write_split_tmp(path, split)?;
    commit(&tmp, path)
}

/// Writes `split` to a temporary file next to `path` and returns the temporary path
/// (rename it with [`commit`]). The temporary file is removed on error.
pub(crate) fn write_split_tmp(path: &Path, split: &Split) -> Result<PathBuf> {
    if split.texts.len() != split.labels.len() {
        return Err(Error::Invalid(format!(
            "split for {} has {} texts but {} labels",
            path.display(),
            split.texts.len(),
            split.labels.len()
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = tmp_path(path);
    let result = write_parquet(&tmp, split);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| tmp)
}

/// Renames a finished temporary file into place.
pub(crate) fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io(path, e)
    })
}

/// A temporary name in the same directory as `path` (so that the rename is atomic), ending in `.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, true),
        Field::new("label", DataType::Int64, true),
    ]))
}

fn write_parquet(tmp: &Path, split: &Split) -> Result<()> {
    let parquet_err = |e: parquet::errors::ParquetError| Error::Parquet {
        path: tmp.to_path_buf(),
        detail: e.to_string(),
        fix: "check free disk space and write permissions, then rerun".into(),
    };
    let text: ArrayRef = Arc::new(StringArray::from_iter_values(split.texts.iter()));
    let label: ArrayRef = Arc::new(Int64Array::from_iter_values(
        split.labels.iter().map(|&l| i64::from(l)),
    ));
    let batch = RecordBatch::try_new(schema(), vec![text, label]).map_err(|e| Error::Parquet {
        path: tmp.to_path_buf(),
        detail: e.to_string(),
        fix: "report this as a bug".into(),
    })?;
    let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet_err)?;
    writer.write(&batch).map_err(parquet_err)?;
    let mut file = writer.into_inner().map_err(parquet_err)?;
    file.flush().map_err(|e| Error::io(tmp, e))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))?;
    Ok(())
}

/// Reads a split from a parquet file with columns `text` (string, large string or string view) and
/// `label` (int64, values 0 or 1); other columns are ignored.
///
/// `fix` is the advice put into every error (it depends on where the file came from).
///
/// Errors: [`Error::Io`] (cannot open), [`Error::Parquet`] (truncated or garbled),
/// [`Error::Schema`] (missing column, wrong type, null, label not 0/1), [`Error::EmptySplit`].
pub fn read_split(path: &Path, fix: &str) -> Result<Split> {
    let parquet_err = |detail: String| Error::Parquet {
        path: path.to_path_buf(),
        detail,
        fix: fix.to_string(),
    };
    let schema_err = |detail: String| Error::Schema {
        path: path.to_path_buf(),
        detail,
        fix: fix.to_string(),
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_err(e.to_string()))?;
    let arrow_schema = builder.schema().clone();
    let names: Vec<String> = arrow_schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    let column = |name: &str| {
        arrow_schema.index_of(name).map_err(|_| {
            schema_err(format!(
                "no column `{name}` (columns: {})",
                names.join(", ")
            ))
        })
    };
    let text_idx = column("text")?;
    let label_idx = column("label")?;
    let text_type = arrow_schema.field(text_idx).data_type().clone();
    if !matches!(
        text_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(schema_err(format!("column `text` has type {text_type}")));
    }
    let label_type = arrow_schema.field(label_idx).data_type().clone();
    if label_type != DataType::Int64 {
        return Err(schema_err(format!("column `label` has type {label_type}")));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [text_idx, label_idx]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| parquet_err(e.to_string()))?;

    let mut split = Split::default();
    for batch in reader {
        let batch = batch.map_err(|e| parquet_err(e.to_string()))?;
        let text = batch
            .column_by_name("text")
            .ok_or_else(|| schema_err("no column `text`".into()))?;
        let label = batch
            .column_by_name("label")
            .ok_or_else(|| schema_err("no column `label`".into()))?;
        let row0 = split.len();
        if text.null_count() > 0 || label.null_count() > 0 {
            let col = if text.null_count() > 0 {
                "text"
            } else {
                "label"
            };
            return Err(schema_err(format!(
                "column `{col}` has nulls (in rows {row0}..{})",
                row0 + batch.num_rows()
            )));
        }
        match text.data_type() {
            DataType::Utf8 => split.texts.extend(
                text.as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap_or_default().to_owned()),
            ),
            DataType::LargeUtf8 => split.texts.extend(
                text.as_string::<i64>()
                    .iter()
                    .map(|s| s.unwrap_or_default().to_owned()),
            ),
            DataType::Utf8View => split.texts.extend(
                text.as_string_view()
                    .iter()
                    .map(|s| s.unwrap_or_default().to_owned()),
            ),
            other => return Err(schema_err(format!("column `text` has type {other}"))),
        }
        for (i, value) in label
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .enumerate()
        {
            match *value {
                0 | 1 => split.labels.push(*value as u8),
                v => {
                    return Err(schema_err(format!("row {} has label {v}", row0 + i)));
                }
            }
        }
    }
    if split.is_empty() {
        return Err(Error::EmptySplit {
            path: path.to_path_buf(),
            fix: fix.to_string(),
        });
    }
    Ok(split)
}
