//! Parquet round trip and bad parquet files.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use lra::{Error, Split, read_split, write_split};

fn sample() -> Split {
    Split {
        texts: vec![
            "A fine film.<br /><br />Really.".into(),
            "été, naïve — 日本語 😀".into(),
            String::new(),
            "x".repeat(10_000),
        ],
        labels: vec![1, 0, 0, 1],
    }
}

/// Named columns of a test file.
type Columns = Vec<(&'static str, ArrayRef)>;

fn write_batch(path: &Path, columns: Columns) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_round_trip_keeps_bytes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/train.parquet");
    write_split(&path, &sample()).unwrap();
    let back = read_split(&path, "fix").unwrap();
    assert_eq!(back, sample());
    // Only the final file exists: the temporary file was renamed.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["train.parquet"]);
    // The schema is the Hugging Face one.
    let file = std::fs::File::open(&path).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema();
    assert_eq!(schema.field(0).name(), "text");
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(schema.field(1).name(), "label");
    assert_eq!(schema.field(1).data_type(), &DataType::Int64);
}

#[test]
fn overwrite_is_atomic_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_split(&path, &sample()).unwrap();
    let small = Split {
        texts: vec!["only".into()],
        labels: vec![0],
    };
    write_split(&path, &small).unwrap();
    assert_eq!(read_split(&path, "fix").unwrap(), small);
    // Mismatched lengths are refused before anything is written.
    let bad = Split {
        texts: vec!["a".into()],
        labels: vec![],
    };
    assert!(matches!(write_split(&path, &bad), Err(Error::Invalid(_))));
    assert_eq!(read_split(&path, "fix").unwrap(), small);
}

#[test]
fn large_string_and_extra_columns_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.parquet");
    write_batch(
        &path,
        vec![
            ("id", Arc::new(Int32Array::from(vec![7, 8])) as ArrayRef),
            ("label", Arc::new(Int64Array::from(vec![1, 0]))),
            ("text", Arc::new(LargeStringArray::from(vec!["b", "a"]))),
        ],
    );
    let s = read_split(&path, "fix").unwrap();
    assert_eq!(s.texts, vec!["b", "a"]);
    assert_eq!(s.labels, vec![1, 0]);
}

#[test]
fn garbled_and_truncated_parquet_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write_split(&good, &sample()).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let garbled = dir.path().join("garbled.parquet");
    let mut g = bytes.clone();
    for b in &mut g[4..bytes.len() / 2] {
        *b ^= 0x5A;
    }
    std::fs::write(&garbled, &g).unwrap();
    let text = dir.path().join("text.parquet");
    std::fs::write(&text, b"this is not parquet at all").unwrap();

    for path in [&truncated, &garbled, &text] {
        let err = read_split(path, "delete it and rerun").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Parquet { .. }),
            "{}: {msg}",
            path.display()
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("delete it and rerun"), "{msg}");
    }
}

#[test]
fn wrong_columns_types_nulls_and_labels_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Columns, &str)> = vec![
        (
            "no_label",
            vec![("text", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)],
            "no column `label`",
        ),
        (
            "renamed",
            vec![
                ("review", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
                ("label", Arc::new(Int64Array::from(vec![0]))),
            ],
            "no column `text`",
        ),
        (
            "label_type",
            vec![
                ("text", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
                ("label", Arc::new(StringArray::from(vec!["pos"]))),
            ],
            "column `label` has type Utf8",
        ),
        (
            "text_type",
            vec![
                ("text", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
                ("label", Arc::new(Int64Array::from(vec![0]))),
            ],
            "column `text` has type Int64",
        ),
        (
            "null_text",
            vec![
                (
                    "text",
                    Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
                ),
                ("label", Arc::new(Int64Array::from(vec![0, 1]))),
            ],
            "column `text` has nulls",
        ),
        (
            "bad_label",
            vec![
                (
                    "text",
                    Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
                ),
                ("label", Arc::new(Int64Array::from(vec![0, -1]))),
            ],
            "row 1 has label -1",
        ),
    ];
    for (name, columns, want) in cases {
        let path = dir.path().join(format!("{name}.parquet"));
        write_batch(&path, columns);
        let err = read_split(&path, "replace it").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Schema { .. }), "{name}: {msg}");
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("replace it"),
            "{msg}"
        );
    }
}

#[test]
fn empty_split_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.parquet");
    write_split(&path, &Split::default()).unwrap();
    let err = read_split(&path, "rerun").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::EmptySplit { .. }), "{msg}");
    assert!(
        msg.contains("no rows") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = read_split(Path::new("/nonexistent/x.parquet"), "rerun").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.parquet"));
}
