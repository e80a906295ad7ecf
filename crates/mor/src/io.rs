//! Reading and writing blocks: JSON `diag-ssm/1` and safetensors.
//!
//! # JSON `diag-ssm/1`
//! ```text
//! { "format": "diag-ssm/1",
//!   "lambda": [[re, im], …]            // [n, 2]
//!   "b":      [[[re, im], …], …]       // [n, m, 2]
//!   "c":      [[[re, im], …], …]       // [p, n, 2]
//!   "c_rev":  same as c                // optional (bidirectional)
//!   "d":      [d_1, …]                 // optional, [m] (m = p)
//!   "linear": [[…], …]                 // optional, E, [q, p]
//!   "quadratic": [[[…], …], …] }       // optional, N_1..N_s, [s, p, p], symmetric
//! ```
//!
//! # safetensors
//! One block: f64 tensors `lambda` `[n, 2]`, `b` `[n, m, 2]`, `c` `[p, n, 2]`, optional `c_rev`
//! `[p, n, 2]`, `d` `[m]`, `linear` `[q, p]`, `quadratic` `[s, p, p]` (the last axis of size 2 is
//! `(re, im)`), metadata `format = diag-ssm/1`. Several blocks (the layers of a
//! [`DeepSsm`](crate::model::DeepSsm)): the same names prefixed by `layers.{k}.`, metadata
//! `n_layers`.
//!
//! All writes go to a temporary file in the target directory, then are renamed into place.
//!
//! # Accepted numbers
//! Every reader and writer refuses a block with a non-finite (NaN, infinite) number in any field
//! (`lambda`, `b`, `c`, `c_rev`, `d`, `linear`, `quadratic`). A JSON document read at the
//! command-line boundary ([`read_json`], [`from_json_str`]) must also keep its numbers in the range
//! where the formulas are meaningful in f64 ([`check_ranges`]):
//! - no subnormal number (non-zero with magnitude below `f64::MIN_POSITIVE` ≈ 2.2e-308: it has
//!   lost precision and its products vanish); write 0 instead;
//! - every magnitude at most [`MAX_MAGNITUDE`] = 1e30: the formulas multiply up to ten entries
//!   (an LQO block's squared h2 norm holds `N²·C⁴·B⁴`), so larger numbers overflow f64 (1.8e308);
//! - every field other than `lambda` that is not all zero has a largest magnitude of at least
//!   [`MIN_SCALE`] = 1e-30, so that those products stay above f64's smallest normal number
//!   instead of underflowing to a norm of 0. Single small entries beside larger ones are fine.
//!
//! A system outside this range has the same reductions after rescaling (`b` by α, `c` and `c_rev`
//! by β scales every linear output by αβ).

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use faer::{Mat, c64};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The format tag of JSON and safetensors files.
pub const FORMAT: &str = "diag-ssm/1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBlock {
    format: String,
    lambda: Vec<Vec<f64>>,
    b: Vec<Vec<Vec<f64>>>,
    c: Vec<Vec<Vec<f64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c_rev: Option<Vec<Vec<Vec<f64>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    linear: Option<Vec<Vec<f64>>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quadratic: Vec<Vec<Vec<f64>>>,
}

fn fmt_err(path: &str, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_string(),
        msg: msg.into(),
    }
}

/// A complex number stored as `[re, im]`; `at` names it in the message.
fn complex(path: &str, at: &str, v: &[f64]) -> Result<c64> {
    match v {
        [re, im] => Ok(c64::new(*re, *im)),
        _ => Err(fmt_err(
            path,
            format!("{at} has {} numbers, expected [re, im]", v.len()),
        )),
    }
}

fn cmat(path: &str, key: &str, rows: &[Vec<Vec<f64>>]) -> Result<Mat<c64>> {
    let nr = rows.len();
    let nc = rows.first().map_or(0, |r| r.len());
    let mut m = Mat::zeros(nr, nc);
    for (i, r) in rows.iter().enumerate() {
        if r.len() != nc {
            return Err(fmt_err(
                path,
                format!("`{key}` row {i} has {} entries, row 0 has {nc}", r.len()),
            ));
        }
        for (j, v) in r.iter().enumerate() {
            m[(i, j)] = complex(path, &format!("`{key}`[{i}][{j}]"), v)?;
        }
    }
    Ok(m)
}

fn rmat(path: &str, key: &str, rows: &[Vec<f64>]) -> Result<Mat<f64>> {
    let nr = rows.len();
    let nc = rows.first().map_or(0, |r| r.len());
    for (i, r) in rows.iter().enumerate() {
        if r.len() != nc {
            return Err(fmt_err(
                path,
                format!("`{key}` row {i} has {} entries, row 0 has {nc}", r.len()),
            ));
        }
    }
    Ok(Mat::from_fn(nr, nc, |i, j| rows[i][j]))
}

/// Checks shapes, finiteness and symmetry of a block; `path` names it in messages.
///
/// Does not require stability (a `tlh2` reduction may be unstable); see
/// [`check_stable`](crate::gram::check_stable).
///
/// # Errors
/// [`Error::Format`] naming the offending field and the expected shape.
pub fn validate(block: &DiagBlock, path: &str) -> Result<()> {
    let n = block.n_modes();
    let (m, p) = (block.n_inputs(), block.n_outputs());
    if block.b.nrows() != n {
        return Err(fmt_err(
            path,
            format!(
                "`b` has {} rows but `lambda` has {n} modes; expected b [n, m, 2]",
                block.b.nrows()
            ),
        ));
    }
    if block.c.ncols() != n {
        return Err(fmt_err(
            path,
            format!(
                "`c` has {} columns but `lambda` has {n} modes; expected c [p, n, 2]",
                block.c.ncols()
            ),
        ));
    }
    if n > 0 && (m == 0 || p == 0) {
        return Err(fmt_err(
            path,
            format!("empty input or output dimension (m = {m}, p = {p})"),
        ));
    }
    if let Some(cr) = &block.c_rev
        && (cr.nrows() != p || cr.ncols() != n)
    {
        return Err(fmt_err(
            path,
            format!(
                "`c_rev` is [{}, {}] but `c` is [{p}, {n}]; they must have the same shape",
                cr.nrows(),
                cr.ncols()
            ),
        ));
    }
    if let Some(d) = &block.d {
        if m != p {
            return Err(fmt_err(
                path,
                format!("`d` given but m = {m} != p = {p}; a feed-through needs m = p"),
            ));
        }
        if d.len() != m {
            return Err(fmt_err(
                path,
                format!("`d` has {} entries, expected m = {m}", d.len()),
            ));
        }
    }
    if let Some(e) = &block.linear
        && e.ncols() != p
    {
        return Err(fmt_err(
            path,
            format!(
                "`linear` is [{}, {}], expected [q, p = {p}]",
                e.nrows(),
                e.ncols()
            ),
        ));
    }
    for (k, nq) in block.quadratic.iter().enumerate() {
        if nq.nrows() != p || nq.ncols() != p {
            return Err(fmt_err(
                path,
                format!(
                    "`quadratic[{k}]` is [{}, {}], expected [p, p] = [{p}, {p}]",
                    nq.nrows(),
                    nq.ncols()
                ),
            ));
        }
        let scale = nq.norm_max().max(1e-300);
        for i in 0..p {
            for j in 0..i {
                if (nq[(i, j)] - nq[(j, i)]).abs() > 1e-10 * scale {
                    return Err(fmt_err(
                        path,
                        format!(
                            "`quadratic[{k}]` is not symmetric: entry ({i},{j}) = {} but ({j},{i}) = {}; use (N + Nᵀ)/2",
                            nq[(i, j)],
                            nq[(j, i)]
                        ),
                    ));
                }
            }
        }
    }
    let finite_c = |mt: &Mat<c64>| {
        (0..mt.nrows()).all(|i| {
            (0..mt.ncols()).all(|j| mt[(i, j)].re.is_finite() && mt[(i, j)].im.is_finite())
        })
    };
    let finite_r =
        |mt: &Mat<f64>| (0..mt.nrows()).all(|i| (0..mt.ncols()).all(|j| mt[(i, j)].is_finite()));
    let fields: [(&str, bool); 7] = [
        (
            "lambda",
            block
                .lambda
                .iter()
                .all(|l| l.re.is_finite() && l.im.is_finite()),
        ),
        ("b", finite_c(&block.b)),
        ("c", finite_c(&block.c)),
        ("c_rev", block.c_rev.as_ref().is_none_or(finite_c)),
        (
            "d",
            block
                .d
                .as_ref()
                .is_none_or(|d| d.iter().all(|x| x.is_finite())),
        ),
        ("linear", block.linear.as_ref().is_none_or(finite_r)),
        ("quadratic", block.quadratic.iter().all(finite_r)),
    ];
    if let Some((name, _)) = fields.iter().find(|(_, ok)| !ok) {
        return Err(fmt_err(
            path,
            format!(
                "non-finite (NaN or infinite) entry in `{name}`; every number of a block must be \
                 finite"
            ),
        ));
    }
    Ok(())
}

/// Largest magnitude of any number of a block read at the command-line boundary (module doc,
/// *Accepted numbers*).
pub const MAX_MAGNITUDE: f64 = 1e30;

/// Smallest largest-magnitude of a field (other than `lambda`) that is not all zero (module doc,
/// *Accepted numbers*).
pub const MIN_SCALE: f64 = 1e-30;

/// The numbers of one field in storage order, with a function naming the `k`-th one.
struct Field<'a> {
    name: String,
    values: Vec<f64>,
    locate: Box<dyn Fn(usize) -> String + 'a>,
}

fn complex_field<'a>(name: &str, m: &'a Mat<c64>) -> Field<'a> {
    let values = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).flat_map(move |j| [m[(i, j)].re, m[(i, j)].im]))
        .collect();
    let nc = m.ncols().max(1);
    let n = name.to_string();
    Field {
        name: name.to_string(),
        values,
        locate: Box::new(move |k| {
            let part = if k % 2 == 0 { "re" } else { "im" };
            format!("`{n}`[{}][{}] ({part})", (k / 2) / nc, (k / 2) % nc)
        }),
    }
}

fn real_field<'a>(name: &str, m: &'a Mat<f64>) -> Field<'a> {
    let values = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    let nc = m.ncols().max(1);
    let n = name.to_string();
    Field {
        name: name.to_string(),
        values,
        locate: Box::new(move |k| format!("`{n}`[{}][{}]", k / nc, k % nc)),
    }
}

/// Checks that every number of `block` lies in the range where the formulas are meaningful in
/// f64 (module doc, *Accepted numbers*): finite, not subnormal, magnitude at most
/// [`MAX_MAGNITUDE`], and each field but `lambda` either all zero or with a largest magnitude of
/// at least [`MIN_SCALE`]. `path` names the block in messages.
///
/// # Errors
/// [`Error::Format`] naming the field, the entry and the limit.
pub fn check_ranges(block: &DiagBlock, path: &str) -> Result<()> {
    let lambda: Vec<f64> = block.lambda.iter().flat_map(|l| [l.re, l.im]).collect();
    let mut fields = vec![
        Field {
            name: "lambda".into(),
            values: lambda,
            locate: Box::new(|k| {
                format!(
                    "`lambda`[{}] ({})",
                    k / 2,
                    if k % 2 == 0 { "re" } else { "im" }
                )
            }),
        },
        complex_field("b", &block.b),
        complex_field("c", &block.c),
    ];
    if let Some(cr) = &block.c_rev {
        fields.push(complex_field("c_rev", cr));
    }
    if let Some(d) = &block.d {
        fields.push(Field {
            name: "d".into(),
            values: d.clone(),
            locate: Box::new(|k| format!("`d`[{k}]")),
        });
    }
    if let Some(e) = &block.linear {
        fields.push(real_field("linear", e));
    }
    for (k, n) in block.quadratic.iter().enumerate() {
        fields.push(real_field(&format!("quadratic[{k}]"), n));
    }
    for f in &fields {
        let mut largest = 0.0_f64;
        for (k, &x) in f.values.iter().enumerate() {
            if !x.is_finite() {
                return Err(fmt_err(
                    path,
                    format!(
                        "{} = {x} is not finite; every number must be finite",
                        (f.locate)(k)
                    ),
                ));
            }
            if x.is_subnormal() {
                return Err(fmt_err(
                    path,
                    format!(
                        "{} = {x:e} is subnormal (non-zero but below {:e}, where f64 has lost \
                         precision and the formulas' products vanish); write 0 there, or rescale \
                         the block",
                        (f.locate)(k),
                        f64::MIN_POSITIVE
                    ),
                ));
            }
            if x.abs() > MAX_MAGNITUDE {
                return Err(fmt_err(
                    path,
                    format!(
                        "{} = {x:e} exceeds {MAX_MAGNITUDE:e} in magnitude: the formulas multiply \
                         up to ten numbers of a block and would overflow f64; rescale the block \
                         (b by α, c and c_rev by β scale every linear output by αβ)",
                        (f.locate)(k)
                    ),
                ));
            }
            largest = largest.max(x.abs());
        }
        if f.name != "lambda" && largest > 0.0 && largest < MIN_SCALE {
            return Err(fmt_err(
                path,
                format!(
                    "`{}` is all tiny: its largest magnitude {largest:e} is below {MIN_SCALE:e}, \
                     so the formulas' products would underflow to 0 (an h2 norm of 0 for a \
                     non-zero system); rescale the block (b by α, c and c_rev by β scale every \
                     linear output by αβ), or write exact zeros if the field is meant to be 0",
                    f.name
                ),
            ));
        }
    }
    Ok(())
}

/// Parses a `diag-ssm/1` JSON document (see the module doc) and validates it, including the
/// range of its numbers ([`check_ranges`]).
///
/// # Errors
/// [`Error::Format`] (with `path` in the message) for bad JSON, a wrong `format` tag, ragged or
/// mismatched shapes, asymmetric `N_i`, non-finite values or numbers out of range.
pub fn from_json_str(text: &str, path: &str) -> Result<DiagBlock> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| fmt_err(path, format!("not a valid JSON document: {e}")))?;
    if !value.is_object() {
        return Err(fmt_err(
            path,
            "expected a JSON object {\"format\": \"diag-ssm/1\", \"lambda\": …, \"b\": …, \"c\": …}",
        ));
    }
    let j: JsonBlock = serde_json::from_value(value)
        .map_err(|e| fmt_err(path, format!("not a valid diag-ssm/1 document: {e}")))?;
    if j.format != FORMAT {
        return Err(fmt_err(
            path,
            format!("`format` is `{}`, expected `{FORMAT}`", j.format),
        ));
    }
    let lambda = j
        .lambda
        .iter()
        .enumerate()
        .map(|(i, l)| complex(path, &format!("`lambda`[{i}]"), l))
        .collect::<Result<Vec<_>>>()?;
    let b = cmat(path, "b", &j.b)?;
    let c = cmat(path, "c", &j.c)?;
    let c_rev = j
        .c_rev
        .as_deref()
        .map(|r| cmat(path, "c_rev", r))
        .transpose()?;
    let linear = j
        .linear
        .as_deref()
        .map(|r| rmat(path, "linear", r))
        .transpose()?;
    let quadratic = j
        .quadratic
        .iter()
        .enumerate()
        .map(|(k, r)| rmat(path, &format!("quadratic[{k}]"), r))
        .collect::<Result<Vec<_>>>()?;
    let mut block = DiagBlock {
        lambda,
        b,
        c,
        c_rev,
        d: j.d,
        linear,
        quadratic,
    };
    // An empty `b` (n = 0) loses m; keep the block consistent.
    if block.n_modes() == 0 && block.b.ncols() == 0 {
        block.b = Mat::zeros(0, 0);
    }
    validate(&block, path)?;
    check_ranges(&block, path)?;
    Ok(block)
}

/// Serialises a block as a `diag-ssm/1` JSON document (pretty-printed).
pub fn to_json_string(block: &DiagBlock) -> String {
    let cm = |m: &Mat<c64>| -> Vec<Vec<Vec<f64>>> {
        (0..m.nrows())
            .map(|i| {
                (0..m.ncols())
                    .map(|j| vec![m[(i, j)].re, m[(i, j)].im])
                    .collect()
            })
            .collect()
    };
    let rm = |m: &Mat<f64>| -> Vec<Vec<f64>> {
        (0..m.nrows())
            .map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect())
            .collect()
    };
    let j = JsonBlock {
        format: FORMAT.into(),
        lambda: block.lambda.iter().map(|l| vec![l.re, l.im]).collect(),
        b: cm(&block.b),
        c: cm(&block.c),
        c_rev: block.c_rev.as_ref().map(cm),
        d: block.d.clone(),
        linear: block.linear.as_ref().map(rm),
        quadratic: block.quadratic.iter().map(rm).collect(),
    };
    serde_json::to_string_pretty(&j).expect("serialising plain numbers cannot fail")
}

/// Reads and validates a `diag-ssm/1` JSON file.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Format`] as in [`from_json_str`].
pub fn read_json(path: impl AsRef<Path>) -> Result<DiagBlock> {
    let p = path.as_ref();
    let text = std::fs::read_to_string(p).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    from_json_str(&text, &p.display().to_string())
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (`.<name>.<pid>.tmp`),
/// written, fsynced and renamed over `path`, then the directory synced. On failure the temporary
/// file is removed and `path` is untouched. The one implementation of the workspace (`s5` and
/// `bench` call it).
///
/// # Errors
/// [`Error::Io`] naming the path that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let io = |p: &Path, source| Error::Io {
        path: p.display().to_string(),
        source,
    };
    let res = (|| -> std::result::Result<(), (std::path::PathBuf, std::io::Error)> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| (tmp.clone(), e))?;
        f.write_all(bytes).map_err(|e| (tmp.clone(), e))?;
        f.sync_all().map_err(|e| (tmp.clone(), e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    res.map_err(|(p, e)| {
        let _ = std::fs::remove_file(&tmp);
        io(&p, e)
    })
}

/// Validates and writes a block as `diag-ssm/1` JSON (atomically).
pub fn write_json(path: impl AsRef<Path>, block: &DiagBlock) -> Result<()> {
    let p = path.as_ref();
    validate(block, &p.display().to_string())?;
    write_atomic(p, to_json_string(block).as_bytes())
}

// ---------------------------------------------------------------- safetensors

struct Owned {
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f64_bytes(v: impl IntoIterator<Item = f64>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn push_block(out: &mut Vec<(String, Owned)>, prefix: &str, b: &DiagBlock) {
    let n = b.n_modes();
    let (m, p) = (b.n_inputs(), b.n_outputs());
    let cm = |mt: &Mat<c64>| {
        f64_bytes(
            (0..mt.nrows())
                .flat_map(|i| (0..mt.ncols()).flat_map(move |j| [mt[(i, j)].re, mt[(i, j)].im])),
        )
    };
    let rm = |mt: &Mat<f64>| {
        f64_bytes((0..mt.nrows()).flat_map(|i| (0..mt.ncols()).map(move |j| mt[(i, j)])))
    };
    out.push((
        format!("{prefix}lambda"),
        Owned {
            shape: vec![n, 2],
            data: f64_bytes(b.lambda.iter().flat_map(|l| [l.re, l.im])),
        },
    ));
    out.push((
        format!("{prefix}b"),
        Owned {
            shape: vec![n, m, 2],
            data: cm(&b.b),
        },
    ));
    out.push((
        format!("{prefix}c"),
        Owned {
            shape: vec![p, n, 2],
            data: cm(&b.c),
        },
    ));
    if let Some(cr) = &b.c_rev {
        out.push((
            format!("{prefix}c_rev"),
            Owned {
                shape: vec![p, n, 2],
                data: cm(cr),
            },
        ));
    }
    if let Some(d) = &b.d {
        out.push((
            format!("{prefix}d"),
            Owned {
                shape: vec![d.len()],
                data: f64_bytes(d.iter().copied()),
            },
        ));
    }
    if let Some(e) = &b.linear {
        out.push((
            format!("{prefix}linear"),
            Owned {
                shape: vec![e.nrows(), p],
                data: rm(e),
            },
        ));
    }
    if !b.quadratic.is_empty() {
        let data = b.quadratic.iter().flat_map(rm).collect();
        out.push((
            format!("{prefix}quadratic"),
            Owned {
                shape: vec![b.quadratic.len(), p, p],
                data,
            },
        ));
    }
}

fn serialize(tensors: &[(String, Owned)], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(k, o)| {
            TensorView::new(Dtype::F64, o.shape.clone(), &o.data)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Argument(format!("safetensors tensor `{k}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Argument(format!("safetensors serialisation: {e}")))
}

/// Writes one block as safetensors (module doc), atomically.
pub fn write_safetensors(path: impl AsRef<Path>, block: &DiagBlock) -> Result<()> {
    let p = path.as_ref();
    validate(block, &p.display().to_string())?;
    let mut t = vec![];
    push_block(&mut t, "", block);
    let meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    write_atomic(p, &serialize(&t, meta)?)
}

/// Writes several blocks (e.g. the SSM blocks of a [`DeepSsm`](crate::model::DeepSsm)'s layers)
/// as safetensors with the prefixes `layers.{k}.`, atomically.
pub fn write_blocks_safetensors(path: impl AsRef<Path>, blocks: &[DiagBlock]) -> Result<()> {
    let p = path.as_ref();
    let mut t = vec![];
    for (k, b) in blocks.iter().enumerate() {
        validate(b, &format!("{} layer {k}", p.display()))?;
        push_block(&mut t, &format!("layers.{k}."), b);
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("n_layers".to_string(), blocks.len().to_string()),
    ]);
    write_atomic(p, &serialize(&t, meta)?)
}

/// Writes the SSM blocks of every layer of `model` (see [`write_blocks_safetensors`]).
pub fn write_model_blocks_safetensors(
    path: impl AsRef<Path>,
    model: &crate::model::DeepSsm,
) -> Result<()> {
    let blocks: Vec<DiagBlock> = model.layers.iter().map(|l| l.ssm.clone()).collect();
    write_blocks_safetensors(path, &blocks)
}

/// Replaces the SSM blocks of `model`'s layers by those read from `path` (e.g. a reduction
/// written by [`write_model_blocks_safetensors`]); norms, gates and decoder are kept.
///
/// # Errors
/// As [`read_blocks_safetensors`]; [`Error::Shape`] if the number of blocks or a block's `m`, `p`
/// differs from the model's layers.
pub fn read_model_blocks_safetensors(
    path: impl AsRef<Path>,
    model: &crate::model::DeepSsm,
) -> Result<crate::model::DeepSsm> {
    let p = path.as_ref();
    let blocks = read_blocks_safetensors(p)?;
    if blocks.len() != model.layers.len() {
        return Err(Error::Shape(format!(
            "{}: {} blocks but the model has {} layers",
            p.display(),
            blocks.len(),
            model.layers.len()
        )));
    }
    let mut out = model.clone();
    for (k, (layer, b)) in out.layers.iter_mut().zip(blocks).enumerate() {
        if b.n_inputs() != layer.ssm.n_inputs() || b.n_outputs() != layer.ssm.n_outputs() {
            return Err(Error::Shape(format!(
                "{} layer {k}: block is p={} x m={}, model layer is p={} x m={}",
                p.display(),
                b.n_outputs(),
                b.n_inputs(),
                layer.ssm.n_outputs(),
                layer.ssm.n_inputs()
            )));
        }
        layer.ssm = b;
    }
    Ok(out)
}

fn get_f64(
    st: &SafeTensors,
    path: &str,
    name: &str,
    rank: usize,
) -> Result<Option<(Vec<usize>, Vec<f64>)>> {
    let v = match st.tensor(name) {
        Ok(v) => v,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => return Err(fmt_err(path, format!("tensor `{name}`: {e}"))),
    };
    if v.dtype() != Dtype::F64 {
        return Err(fmt_err(
            path,
            format!("tensor `{name}` has dtype {:?}, expected F64", v.dtype()),
        ));
    }
    if v.shape().len() != rank {
        return Err(fmt_err(
            path,
            format!(
                "tensor `{name}` has shape {:?}, expected rank {rank}",
                v.shape()
            ),
        ));
    }
    let data = v
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok(Some((v.shape().to_vec(), data)))
}

fn read_block(st: &SafeTensors, path: &str, prefix: &str) -> Result<DiagBlock> {
    let need = |name: &str, rank| {
        get_f64(st, path, &format!("{prefix}{name}"), rank)?
            .ok_or_else(|| fmt_err(path, format!("missing tensor `{prefix}{name}`")))
    };
    let cplx = |(s, d): (Vec<usize>, Vec<f64>), name: &str| -> Result<Mat<c64>> {
        if s[2] != 2 {
            return Err(fmt_err(
                path,
                format!("tensor `{prefix}{name}` has shape {s:?}, last axis must be 2 (re, im)"),
            ));
        }
        Ok(Mat::from_fn(s[0], s[1], |i, j| {
            let k = 2 * (i * s[1] + j);
            c64::new(d[k], d[k + 1])
        }))
    };
    let (ls, ld) = need("lambda", 2)?;
    if ls[1] != 2 {
        return Err(fmt_err(
            path,
            format!("tensor `{prefix}lambda` has shape {ls:?}, expected [n, 2]"),
        ));
    }
    let lambda = (0..ls[0])
        .map(|i| c64::new(ld[2 * i], ld[2 * i + 1]))
        .collect();
    let b = cplx(need("b", 3)?, "b")?;
    let c = cplx(need("c", 3)?, "c")?;
    let c_rev = get_f64(st, path, &format!("{prefix}c_rev"), 3)?
        .map(|t| cplx(t, "c_rev"))
        .transpose()?;
    let d = get_f64(st, path, &format!("{prefix}d"), 1)?.map(|(_, d)| d);
    let linear = get_f64(st, path, &format!("{prefix}linear"), 2)?
        .map(|(s, d)| Mat::from_fn(s[0], s[1], |i, j| d[i * s[1] + j]));
    let quadratic = match get_f64(st, path, &format!("{prefix}quadratic"), 3)? {
        None => vec![],
        Some((s, d)) => (0..s[0])
            .map(|k| Mat::from_fn(s[1], s[2], |i, j| d[(k * s[1] + i) * s[2] + j]))
            .collect(),
    };
    let block = DiagBlock {
        lambda,
        b,
        c,
        c_rev,
        d,
        linear,
        quadratic,
    };
    validate(&block, &format!("{path} {prefix}"))?;
    Ok(block)
}

fn load(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads one block written by [`write_safetensors`].
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<DiagBlock> {
    let p = path.as_ref();
    let bytes = load(p)?;
    let ps = p.display().to_string();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| fmt_err(&ps, format!("not a safetensors file: {e}")))?;
    read_block(&st, &ps, "")
}

/// Reads the blocks written by [`write_blocks_safetensors`] (`layers.0.`, `layers.1.`, … until the
/// first missing index).
pub fn read_blocks_safetensors(path: impl AsRef<Path>) -> Result<Vec<DiagBlock>> {
    let p = path.as_ref();
    let bytes = load(p)?;
    let ps = p.display().to_string();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| fmt_err(&ps, format!("not a safetensors file: {e}")))?;
    let mut out = vec![];
    while st.tensor(&format!("layers.{}.lambda", out.len())).is_ok() {
        out.push(read_block(&st, &ps, &format!("layers.{}.", out.len()))?);
    }
    if out.is_empty() {
        return Err(fmt_err(
            &ps,
            "no tensor `layers.0.lambda`: not a multi-block diag-ssm/1 file",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram::tests::random_block;

    #[test]
    fn json_roundtrip_and_errors() {
        let mut b = random_block(1, 3, 2, 2, true, 1, Some(1), 0.8);
        b.d = Some(vec![0.5, -1.0]);
        let s = to_json_string(&b);
        let b2 = from_json_str(&s, "mem").unwrap();
        // serde_json parses floats to within 1 ulp (no `float_roundtrip` feature).
        assert!((&b.b - &b2.b).norm_max() < 1e-15 && (&b.c - &b2.c).norm_max() < 1e-15);
        assert_eq!(b.lambda.len(), b2.lambda.len());
        assert_eq!(
            (b.d.clone(), b.quadratic.len()),
            (b2.d.clone(), b2.quadratic.len())
        );
        let bad = s.replace("diag-ssm/1", "diag-ssm/2");
        assert!(
            from_json_str(&bad, "x")
                .unwrap_err()
                .to_string()
                .contains("format")
        );
        assert!(from_json_str("{", "x").is_err());
        // Malformed documents get a message naming what is wrong and where.
        let three = s.replacen("\"lambda\": [\n    [", "\"lambda\": [\n    [7.0, ", 1);
        let err = from_json_str(&three, "x").unwrap_err().to_string();
        assert!(
            err.contains("`lambda`[0] has 3 numbers, expected [re, im]"),
            "{err}"
        );
        let err = from_json_str("[1, 2]", "x").unwrap_err().to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
        let four = s.replacen(
            "\"b\": [\n    [\n      [",
            "\"b\": [\n    [\n      [9.0, 9.0, ",
            1,
        );
        let err = from_json_str(&four, "x").unwrap_err().to_string();
        assert!(err.contains("`b`[0][0] has 4 numbers"), "{err}");
        let mut asym = b.clone();
        asym.quadratic[0][(0, 1)] += 1.0;
        assert!(
            from_json_str(&to_json_string(&asym), "x")
                .unwrap_err()
                .to_string()
                .contains("symmetric")
        );
        let mut wrong = b.clone();
        wrong.lambda.push(c64::new(0.1, 0.0));
        assert!(
            from_json_str(&to_json_string(&wrong), "x")
                .unwrap_err()
                .to_string()
                .contains("`b` has")
        );
    }

    #[test]
    fn non_finite_and_out_of_range_numbers_are_named() {
        let b = random_block(4, 3, 2, 2, true, 1, Some(1), 0.8);
        check_ranges(&b, "x").unwrap();
        // Every field is checked for finiteness on every path (safetensors included).
        let mut nan_d = b.clone();
        nan_d.d = Some(vec![0.5, f64::NAN]);
        let e = validate(&nan_d, "x").unwrap_err().to_string();
        assert!(e.contains("non-finite") && e.contains("`d`"), "{e}");
        let mut inf_n = b.clone();
        inf_n.quadratic[0][(0, 0)] = f64::INFINITY;
        let e = validate(&inf_n, "x").unwrap_err().to_string();
        assert!(e.contains("`quadratic`"), "{e}");
        // The range: subnormal, too large, all tiny; a single small entry is fine.
        let mut sub = b.clone();
        sub.linear.as_mut().unwrap()[(0, 1)] = 1e-310;
        let e = check_ranges(&sub, "x").unwrap_err().to_string();
        assert!(e.contains("`linear`[0][1] = 1e-310 is subnormal"), "{e}");
        let mut big = b.clone();
        big.quadratic[0][(1, 1)] = -2e30;
        let e = check_ranges(&big, "x").unwrap_err().to_string();
        assert!(
            e.contains("`quadratic[0]`[1][1] = -2e30 exceeds 1e30"),
            "{e}"
        );
        let mut tiny = b.clone();
        tiny.c_rev = tiny.c_rev.map(|c| c * faer::Scale(c64::new(1e-40, 0.0)));
        let e = check_ranges(&tiny, "x").unwrap_err().to_string();
        assert!(e.contains("`c_rev` is all tiny"), "{e}");
        let mut one_small = b.clone();
        one_small.c[(0, 0)] = c64::new(1e-200, 0.0);
        one_small.lambda[0] = c64::new(1e-200, 0.0);
        check_ranges(&one_small, "x").unwrap();
        // Exact zeros are fine.
        let mut zero = b.clone();
        zero.d = Some(vec![0.0, 0.0]);
        check_ranges(&zero, "x").unwrap();
    }

    #[test]
    fn safetensors_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let b = random_block(2, 3, 2, 2, true, 2, Some(1), 0.8);
        let c = random_block(3, 4, 2, 2, false, 0, None, 0.8);
        let f = dir.path().join("one.safetensors");
        write_safetensors(&f, &b).unwrap();
        assert_eq!(read_safetensors(&f).unwrap(), b);
        let g = dir.path().join("many.safetensors");
        write_blocks_safetensors(&g, &[b.clone(), c.clone()]).unwrap();
        assert_eq!(read_blocks_safetensors(&g).unwrap(), vec![b, c.clone()]);
        assert!(read_blocks_safetensors(&f).is_err());
        let model = crate::model::DeepSsm {
            layers: vec![crate::model::Layer {
                norm: crate::model::Norm::Identity,
                ssm: c.clone(),
                gate: crate::model::Gate::Identity,
            }],
            decoder_w: Mat::zeros(1, 2),
            decoder_b: vec![0.0],
            max_len: 8,
        };
        let h = dir.path().join("model.safetensors");
        write_model_blocks_safetensors(&h, &model).unwrap();
        assert_eq!(read_model_blocks_safetensors(&h, &model).unwrap(), model);
        assert!(read_model_blocks_safetensors(&g, &model).is_err());
    }
}
