//! The figures of a run, drawn from `results.csv` (and `kept_modes.csv`) in pure Rust with
//! plotters (bitmap + SVG backends, text through `ab_glyph` and the embedded DejaVu Sans font).
//!
//! - `accuracy_vs_params.png` / `.svg`: test accuracy against total trainable parameters, one
//!   line per method, the full model as a horizontal reference and the paper's ~60 % parameter
//!   reduction (Sakamoto & Sato, arXiv 2510.14542 v2) as a vertical line.
//! - `error_calibration.png`: per row, the certified output-error bound (`bound_median`) and
//!   the first-order estimate (`estimate_mean`) against the measured mean logit error, two
//!   log-log panels with the line `y = x` (replaced `bound_vs_error.png`).
//! - `modes_per_layer.png`: kept complex modes per layer for each method, at a few ratios.
//! - `paper_figure_ssm.png` / `.svg` and `paper_figure_total.png` / `.svg`: the paper's figure,
//!   the change in test accuracy from the full model against the share of parameters removed,
//!   on the SSM-parameter reading (`ssm_param_reduction`) or the all-parameters reading
//!   (`param_reduction`), with the published anchor points ([`ANCHORS`]) marked as such.
//!
//! Every file is written atomically: a PNG is drawn into the hidden sibling
//! `.<name>.<pid>.tmp.png` (the bitmap backend picks the format from the extension), presented,
//! and renamed onto `<name>`; an SVG is rendered into memory and written with
//! [`crate::results::write_atomic`]. A failed figure leaves the previous file (if any) and no
//! temporary file; a killed run's temporaries are removed by the next run
//! ([`crate::outdir::clean_stale_temp_files`]).

use crate::results::{FULL, KeptModes, Row};
use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Parameter reduction at which the paper reports the original accuracy (~60 %).
pub const PAPER_REDUCTION: f64 = 0.6;

const FONT: &str = "sans-serif";

/// Registers the embedded DejaVu Sans font under `sans-serif` (once per process). The bitmap
/// backend cannot draw text without a registered font.
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; a failure here is a build problem.
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans font failed to load"));
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans Bold font failed to load"));
    });
}

/// Method names in plotting order: the order of [`mor::Method::ALL`].
fn method_order() -> impl Iterator<Item = &'static str> {
    mor::Method::ALL.iter().map(|m| m.name())
}

/// Each method's colour (colour-blind friendly Tableau-10 hues first, in the order the methods
/// were added, so a method keeps its colour when others are added; a test checks that every
/// method has one and that no two share it).
fn method_rgb(m: mor::Method) -> RGBColor {
    use mor::Method as M;
    match m {
        M::Modal => RGBColor(31, 119, 180),
        M::Bt => RGBColor(255, 127, 14),
        M::Last => RGBColor(44, 160, 44),
        M::GlobalHinf => RGBColor(214, 39, 40),
        M::UniformHinf => RGBColor(148, 103, 189),
        M::H2 => RGBColor(140, 86, 75),
        M::Tlh2 => RGBColor(227, 119, 194),
        M::LqoH2Taylor => RGBColor(23, 190, 207),
        M::Ebt => RGBColor(188, 189, 34),
        M::Emodal => RGBColor(127, 127, 127),
        M::Aire => RGBColor(0, 92, 49),
        M::LastRef => RGBColor(152, 223, 138),
        M::AireRef => RGBColor(255, 187, 120),
        M::LqoH2 => RGBColor(57, 59, 121),
    }
}

/// A fixed colour per method (colour-blind friendly Tableau-10 hues), so the same method has the
/// same colour in every figure. A recipe with a post-step (`emodal+refit`) has its reducer's
/// colour and is drawn dashed ([`has_post_step`]); one with its own allocation has a shade of it
/// that depends on the allocation (`@sens` darker, `@first-order` and
/// `@bound` two lighter tints), one with a layer override (`bt[1=modal]`) a third lighter tint.
pub fn method_color(method: &str) -> RGBColor {
    let method = method.split_once('+').map_or(method, |(m, _)| m);
    if let Some((reducer, rest)) = method.split_once('[') {
        // A layer override (`bt[1=modal]`): a lighter tint of the reducer's colour (darkened
        // after it if the recipe also names an allocation).
        let light = tint(method_color(reducer), 0.45);
        return match rest.split_once('@') {
            Some(_) => darken(light),
            None => light,
        };
    }
    if let Some((reducer, allocation)) = method.split_once('@') {
        return allocation_shade(method_color(reducer), allocation);
    }
    match method.parse::<mor::Method>() {
        Ok(m) => method_rgb(m),
        Err(_) if method == FULL => BLACK,
        Err(_) => {
            let h = method
                .bytes()
                .fold(0usize, |a, b| a.wrapping_mul(31) + b as usize);
            [RGBColor(188, 189, 34), RGBColor(127, 127, 127)][h % 2]
        }
    }
}

/// The shade of a reducer's colour for a recipe with its own allocation, one per allocation so
/// that two allocations of one reducer (`lqo-h2@bound`, `lqo-h2@first-order`) are told apart:
/// `sens` (and any other name) darker, `first-order` and `bound` tinted towards white by 30 and
/// 60 % (a layer override's tint is 45 %).
fn allocation_shade(base: RGBColor, allocation: &str) -> RGBColor {
    use mor::alloc::Allocation as A;
    match A::ALL.into_iter().find(|a| a.name() == allocation) {
        Some(A::FirstOrder) => tint(base, 0.3),
        Some(A::Bound) => tint(base, 0.6),
        _ => darken(base),
    }
}

/// `c` moved towards white by the fraction `t` (0 = unchanged, 1 = white).
fn tint(c: RGBColor, t: f64) -> RGBColor {
    let f = |x: u8| (f64::from(x) + t * (255.0 - f64::from(x))).round() as u8;
    RGBColor(f(c.0), f(c.1), f(c.2))
}

/// `c` darkened to 55 % of its intensity.
fn darken(c: RGBColor) -> RGBColor {
    let f = |x: u8| (f64::from(x) * 0.55).round() as u8;
    RGBColor(f(c.0), f(c.1), f(c.2))
}

/// Whether `method` names a recipe with a post-step (`<method>+<post-step>`), drawn dashed.
pub fn has_post_step(method: &str) -> bool {
    method.contains('+')
}

/// Methods present in `rows` (without `full`), in plotting order, unknown names last.
fn methods_in(rows: &[Row]) -> Vec<String> {
    let present: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.method != FULL)
        .map(|r| r.method.as_str())
        .collect();
    let mut out: Vec<String> = method_order()
        .filter(|m| present.contains(*m))
        .map(|m| m.to_string())
        .collect();
    for m in present {
        if !method_order().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    out
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// The hidden temporary sibling a PNG is drawn into: `.<name>.<pid>.tmp.png` (it keeps the
/// `.png` extension the bitmap backend picks the format from).
pub fn png_temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{}.tmp.png", std::process::id())))
}

/// Draws a PNG of `size` pixels atomically onto `path` (module doc): `draw` paints into a
/// temporary sibling, which is presented, closed and renamed onto `path`. On any error the
/// temporary file is removed and the error names `path`.
pub fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let tmp = png_temp_path(path)?;
    let res = (|| -> Result<()> {
        {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw(&root)?;
            root.present().map_err(err)?;
            // Dropping the drawing area drops the backend (it has saved the file).
        }
        if !tmp.is_file() {
            anyhow::bail!("the drawing produced no file");
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} onto it", tmp.display()))?;
        Ok(())
    })();
    if let Err(e) = res {
        // The backend saves again on drop if it had not: remove whatever it left.
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "cannot write the figure {} (is the directory writable, with no directory of that \
             name in the way?)",
            path.display()
        )));
    }
    Ok(())
}

/// Draws an SVG of `size` pixels into memory and writes it onto `path` atomically
/// ([`crate::results::write_atomic`]); the error names `path`.
pub fn write_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        draw(&root).with_context(|| format!("cannot draw the figure {}", path.display()))?;
        root.present()
            .map_err(err)
            .with_context(|| format!("cannot draw the figure {}", path.display()))?;
    }
    crate::results::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write the figure {}", path.display()))
}

/// File name of the calibration figure ([`error_calibration`]; replaced `bound_vs_error.png`).
pub const CALIBRATION_FIGURE: &str = "error_calibration.png";

/// Draws every figure of a run into `dir`; returns the files written.
pub fn plot_all(rows: &[Row], kept: &[KeptModes], dir: &Path) -> Result<Vec<PathBuf>> {
    register_fonts();
    let mut out = Vec::new();
    let png = dir.join("accuracy_vs_params.png");
    write_png(&png, (1100, 750), |root| accuracy_vs_params(root, rows))?;
    out.push(png);
    let svg = dir.join("accuracy_vs_params.svg");
    write_svg(&svg, (1100, 750), |root| accuracy_vs_params(root, rows))?;
    out.push(svg);
    let p = dir.join(CALIBRATION_FIGURE);
    write_png(&p, (1500, 720), |root| error_calibration(root, rows))?;
    out.push(p);
    for (axis, name) in [(ParamAxis::Ssm, "ssm"), (ParamAxis::Total, "total")] {
        if rows.iter().any(|r| r.method == FULL) {
            let png = dir.join(format!("paper_figure_{name}.png"));
            write_png(&png, (1200, 750), |root| paper_figure(root, rows, axis))?;
            out.push(png);
            let svg = dir.join(format!("paper_figure_{name}.svg"));
            write_svg(&svg, (1200, 750), |root| paper_figure(root, rows, axis))?;
            out.push(svg);
        }
    }
    if rows.iter().any(|r| r.infer_tokens_per_s.is_finite()) {
        for ext in ["png", "svg"] {
            let p = dir.join(format!("accuracy_vs_speed.{ext}"));
            if ext == "png" {
                write_png(&p, (1100, 750), |root| accuracy_vs_speed(root, rows))?;
            } else {
                write_svg(&p, (1100, 750), |root| accuracy_vs_speed(root, rows))?;
            }
            out.push(p);
        }
    }
    let p = dir.join("modes_per_layer.png");
    write_png(&p, (1500, 600), |root| modes_per_layer(root, kept))?;
    out.push(p);
    Ok(out)
}

/// Accuracy (%) against inference throughput (`infer_tokens_per_s`, thousands of tokens/s on
/// the fixed synthetic batch of every row), one line per method, the full model as a dashed
/// horizontal line and a point; rows without a measured speed are left out.
pub fn accuracy_vs_speed<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[Row],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (root, legend_area) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 300);
    let timed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.accuracy.is_finite() && r.infer_tokens_per_s.is_finite())
        .collect();
    let xs = timed.iter().map(|r| r.infer_tokens_per_s / 1e3);
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |a, x| {
        (a.0.min(x), a.1.max(x))
    });
    let (x_lo, x_hi) = if x_lo.is_finite() {
        (x_lo, x_hi)
    } else {
        (0.0, 1.0)
    };
    let x_pad = ((x_hi - x_lo) * 0.05).max(x_hi * 0.02).max(1e-3);
    let (x_min, x_max) = ((x_lo - x_pad).max(0.0), x_hi + x_pad);
    let (y_lo, y_hi) = timed
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |a, r| {
            (a.0.min(r.accuracy * 100.0), a.1.max(r.accuracy * 100.0))
        });
    let (y_lo, y_hi) = if y_lo.is_finite() {
        (y_lo, y_hi)
    } else {
        (0.0, 100.0)
    };
    let pad = ((y_hi - y_lo) * 0.08).max(1.0);
    let (y_lo, y_hi) = ((y_lo - pad).max(0.0), (y_hi + pad).min(100.0));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Test accuracy vs. inference speed after reduction (no retraining)",
            (FONT, 24),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, y_lo..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("inference throughput (thousand tokens/s, fixed batch, same threads)")
        .y_desc("test accuracy (%)")
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    let mut legend: Vec<LegendEntry> = Vec::new();
    let full = timed.iter().find(|r| r.method == FULL);
    if let Some(f) = full {
        let y = f.accuracy * 100.0;
        draw_full_line(&mut chart, x_min, x_max, y)?;
        chart
            .draw_series(std::iter::once(Circle::new(
                (f.infer_tokens_per_s / 1e3, y),
                6,
                BLACK.filled(),
            )))
            .map_err(err)?;
        legend.push((
            format!(
                "full model ({y:.2} %, {:.1}k tok/s)",
                f.infer_tokens_per_s / 1e3
            ),
            BLACK,
            true,
        ));
    }
    for m in methods_in(rows) {
        let mut pts: Vec<(f64, f64)> = timed
            .iter()
            .filter(|r| r.method == m)
            .map(|r| (r.infer_tokens_per_s / 1e3, r.accuracy * 100.0))
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        legend.push(draw_method_line(&mut chart, pts, m)?);
    }
    draw_legend(&legend_area, &legend)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Accuracy (%) against total trainable parameters, one line per method.
pub fn accuracy_vs_params<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[Row],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    // The legend gets its own panel on the right, so that it never hides a point.
    let (root, legend_area) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 300);
    let full = rows.iter().find(|r| r.method == FULL);
    let finite: Vec<&Row> = rows.iter().filter(|r| r.accuracy.is_finite()).collect();
    let x_data = rows
        .iter()
        .map(|r| r.total_params)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x_min_data = rows.iter().map(|r| r.total_params).min().unwrap_or(0) as f64;
    let x_pad = ((x_data - x_min_data) * 0.05).max(x_data * 0.01);
    let (x_min, x_max) = ((x_min_data - x_pad).max(0.0), x_data + x_pad);
    let mut legend: Vec<LegendEntry> = Vec::new();
    let (mut y_lo, mut y_hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |a, r| {
            (a.0.min(r.accuracy * 100.0), a.1.max(r.accuracy * 100.0))
        });
    if !y_lo.is_finite() {
        (y_lo, y_hi) = (0.0, 100.0);
    }
    let pad = ((y_hi - y_lo) * 0.08).max(1.0);
    let (y_lo, y_hi) = ((y_lo - pad).max(0.0), (y_hi + pad).min(100.0));
    let n_eval = full
        .map(|r| r.n_eval)
        .or_else(|| rows.first().map(|r| r.n_eval));
    let caption = match n_eval {
        Some(n) => {
            format!("Test accuracy vs. model size after reduction (no retraining, {n} reviews)")
        }
        None => "Test accuracy vs. model size after reduction (no retraining)".to_string(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 24))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, y_lo..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("total trainable parameters (count)")
        .y_desc("test accuracy (%)")
        .x_label_formatter(&|x| format_count(*x))
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;

    if let Some(f) = full {
        let y = f.accuracy * 100.0;
        draw_full_line(&mut chart, x_min, x_max, y)?;
        legend.push((format!("full model ({y:.2} %)"), BLACK, true));
        let xr = f.total_params as f64 * (1.0 - PAPER_REDUCTION);
        let grey = RGBColor(120, 120, 120);
        // Only where some swept model reaches it: when the SSMs are a small share of the model,
        // even removing every mode cannot cut 60 % of the parameters, and the line would mislead.
        if xr >= x_min_data {
            chart
                .draw_series(DashedLineSeries::new(
                    [(xr, y_lo), (xr, y_hi)],
                    4,
                    4,
                    grey.stroke_width(2),
                ))
                .map_err(err)?;
            legend.push(("paper: ~60 % fewer params".into(), grey, true));
        }
    }

    for m in methods_in(rows) {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.method == m && r.accuracy.is_finite())
            .map(|r| (r.total_params as f64, r.accuracy * 100.0))
            .collect();
        if let Some(f) = full {
            pts.push((f.total_params as f64, f.accuracy * 100.0));
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        legend.push(draw_method_line(&mut chart, pts, m)?);
    }
    draw_legend(&legend_area, &legend)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Which reading of "parameters removed" a figure's x axis uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamAxis {
    /// The SSM blocks' parameters (`ssm_param_reduction`; ≈ the share of modes removed).
    Ssm,
    /// All trainable parameters (`param_reduction`).
    Total,
}

/// A published result drawn next to our measurements: what, where (% removed on the reading
/// `axis`), and the accuracy change from that paper's own full model (points).
pub struct Anchor {
    /// Label in the legend.
    pub label: &'static str,
    /// The reading its "% removed" is on.
    pub axis: ParamAxis,
    /// Share removed (%).
    pub removed: f64,
    /// Accuracy change from the source's own full model (points).
    pub change: f64,
}

/// Published anchor points on LRA IMDb (sources in `results/imdb/README.md`):
/// - LAST and global H∞ (Gwak et al., NeurIPS 2024), read from their S5-IMDb figure at
///   60 / 70 / 80 / 90 % of states pruned, as changes from 89.31 % (the S5 paper's IMDb model,
///   which their figure starts from; an assumption where the figure's own full value is not given);
/// - AIRE-Prune (Padhy et al., ICLR 2026): 60.8 % of states pruned at −0.29 points, an average
///   over LRA tasks (no IMDb row is public);
/// - Sakamoto & Sato (arXiv 2510.14542) v2: ~60 % of parameters removed at the original
///   accuracy; v1: ~80 % at a 4–5 % drop (drawn at −4.5). Their reading of "parameters" is not
///   stated, so both figures draw them.
pub const ANCHORS: [Anchor; 11] = [
    Anchor {
        label: "LAST (published)",
        axis: ParamAxis::Ssm,
        removed: 60.0,
        change: 88.48 - 89.31,
    },
    Anchor {
        label: "LAST (published)",
        axis: ParamAxis::Ssm,
        removed: 70.0,
        change: 85.05 - 89.31,
    },
    Anchor {
        label: "LAST (published)",
        axis: ParamAxis::Ssm,
        removed: 80.0,
        change: 80.26 - 89.31,
    },
    Anchor {
        label: "LAST (published)",
        axis: ParamAxis::Ssm,
        removed: 90.0,
        change: 57.08 - 89.31,
    },
    Anchor {
        label: "global H∞ (published)",
        axis: ParamAxis::Ssm,
        removed: 60.0,
        change: 88.28 - 89.31,
    },
    Anchor {
        label: "global H∞ (published)",
        axis: ParamAxis::Ssm,
        removed: 70.0,
        change: 87.70 - 89.31,
    },
    Anchor {
        label: "global H∞ (published)",
        axis: ParamAxis::Ssm,
        removed: 80.0,
        change: 83.75 - 89.31,
    },
    Anchor {
        label: "global H∞ (published)",
        axis: ParamAxis::Ssm,
        removed: 90.0,
        change: 63.80 - 89.31,
    },
    Anchor {
        label: "AIRE-Prune (published, LRA mean)",
        axis: ParamAxis::Ssm,
        removed: 60.8,
        change: -0.29,
    },
    Anchor {
        label: "paper v2 claim (~60 %, no drop)",
        axis: ParamAxis::Total,
        removed: 60.0,
        change: 0.0,
    },
    Anchor {
        label: "paper v1 claim (~80 %, 4-5 % drop)",
        axis: ParamAxis::Total,
        removed: 80.0,
        change: -4.5,
    },
];

/// The paper's figure: accuracy change from the full model (points) against the share of
/// parameters removed on the reading `axis`, one line per method (post-steps dashed), the full
/// model as the zero line, and the published [`ANCHORS`] as hollow markers. The paper's claims
/// are drawn on both readings (theirs is not stated); the state-pruning anchors on the SSM one.
pub fn paper_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[Row],
    axis: ParamAxis,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (root, legend_area) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 330);
    let full = rows
        .iter()
        .find(|r| r.method == FULL)
        .ok_or_else(|| anyhow!("the paper figure needs the full model's row"))?;
    let x_of = |r: &Row| {
        100.0
            * match axis {
                ParamAxis::Ssm => r.ssm_param_reduction,
                ParamAxis::Total => r.param_reduction,
            }
    };
    let anchors: Vec<&Anchor> = ANCHORS
        .iter()
        .filter(|a| a.axis == axis || a.label.starts_with("paper"))
        .collect();
    let ours: Vec<(String, Vec<(f64, f64)>)> = methods_in(rows)
        .into_iter()
        .map(|m| {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == m && r.accuracy.is_finite() && x_of(r).is_finite())
                .map(|r| (x_of(r), 100.0 * (r.accuracy - full.accuracy)))
                .collect();
            pts.push((0.0, 0.0));
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (m, pts)
        })
        .collect();
    let y_lo = ours
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .chain(anchors.iter().map(|a| a.change))
        .fold(-5.0_f64, f64::min)
        - 2.0;
    let reading = match axis {
        ParamAxis::Ssm => "SSM parameters removed (%)",
        ParamAxis::Total => "all trainable parameters removed (%)",
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Accuracy change after reduction without retraining ({} test reviews; full model {:.2} %)",
                full.n_eval,
                100.0 * full.accuracy
            ),
            (FONT, 20),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..100.0, y_lo..3.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(reading)
        .y_desc("accuracy change from the full model (points)")
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (100.0, 0.0)],
            10,
            6,
            BLACK.stroke_width(2),
        ))
        .map_err(err)?;
    let mut legend: Vec<LegendEntry> = vec![(
        format!("full model ({:.2} %)", 100.0 * full.accuracy),
        BLACK,
        true,
    )];
    for (m, pts) in ours {
        legend.push(draw_method_line(&mut chart, pts, m)?);
    }
    // Anchors: hollow markers, one shape per source, grey-black, never joined by lines.
    let mut labels: Vec<&str> = Vec::new();
    for a in &anchors {
        let k = match labels.iter().position(|l| *l == a.label) {
            Some(k) => k,
            None => {
                labels.push(a.label);
                labels.len() - 1
            }
        };
        let color = RGBColor(60, 60, 60);
        let p = (a.removed, a.change);
        match k % ANCHOR_GLYPHS.len() {
            0 => chart
                .draw_series(std::iter::once(TriangleMarker::new(
                    p,
                    8,
                    color.stroke_width(2),
                )))
                .map(|_| ()),
            1 => chart
                .draw_series(std::iter::once(Cross::new(p, 7, color.stroke_width(2))))
                .map(|_| ()),
            2 => chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(p.0 - 0.8, p.1 - 0.5), (p.0 + 0.8, p.1 + 0.5)],
                    color.stroke_width(2),
                )))
                .map(|_| ()),
            3 => chart
                .draw_series(std::iter::once(Circle::new(p, 8, color.stroke_width(2))))
                .map(|_| ()),
            _ => chart
                .draw_series(std::iter::once(Circle::new(p, 6, color.filled())))
                .map(|_| ()),
        }
        .map_err(err)?;
    }
    for (k, l) in labels.iter().enumerate() {
        let shape = ANCHOR_GLYPHS[k % ANCHOR_GLYPHS.len()];
        legend.push((format!("{shape} {l}"), RGBColor(60, 60, 60), false));
    }
    draw_legend(&legend_area, &legend)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The full model's accuracy `y` as a dashed black line across `x_min..x_max`.
fn draw_full_line<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    x_min: f64,
    x_max: f64,
    y: f64,
) -> Result<()> {
    chart
        .draw_series(DashedLineSeries::new(
            [(x_min, y), (x_max, y)],
            10,
            6,
            BLACK.stroke_width(2),
        ))
        .map_err(err)?;
    Ok(())
}

/// Draws one method's points joined by a line in its colour, dashed for a recipe with a
/// post-step; returns its legend entry.
fn draw_method_line<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    pts: Vec<(f64, f64)>,
    method: String,
) -> Result<LegendEntry> {
    let color = method_color(&method);
    let dashed = has_post_step(&method);
    if dashed {
        chart
            .draw_series(DashedLineSeries::new(
                pts.clone(),
                6,
                4,
                color.stroke_width(2),
            ))
            .map_err(err)?;
    } else {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?;
    }
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
        .map_err(err)?;
    Ok((method, color, dashed))
}

/// Legend glyphs of the anchor markers, in the order [`paper_figure`] assigns them.
const ANCHOR_GLYPHS: [&str; 5] = ["▲", "✕", "□", "○", "●"];

/// A legend entry: label, colour, dashed.
type LegendEntry = (String, RGBColor, bool);

/// Draws a legend (a short line and the label per entry) at the top of its own panel.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
) -> Result<()> {
    let style = TextStyle::from((FONT, 16).into_font()).color(&BLACK);
    for (i, (label, color, dashed)) in entries.iter().enumerate() {
        let y = 70 + 26 * i as i32;
        let line = color.stroke_width(3);
        if ANCHOR_GLYPHS.iter().any(|g| label.starts_with(g)) {
            // A published anchor: its glyph is the label's first character; no line.
        } else if *dashed {
            area.draw(&PathElement::new(vec![(10, y), (20, y)], line))
                .map_err(err)?;
            area.draw(&PathElement::new(vec![(26, y), (36, y)], line))
                .map_err(err)?;
        } else {
            area.draw(&PathElement::new(vec![(10, y), (36, y)], line))
                .map_err(err)?;
            area.draw(&Circle::new((23, y), 4, color.filled()))
                .map_err(err)?;
        }
        area.draw(&Text::new(label.clone(), (46, y - 9), style.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// The calibration figure: per row, the certified bound (`bound_median`, left) and the
/// first-order estimate (`estimate_mean`, right) against the measured mean logit error,
/// log-log, one colour per method, each with `y = x`. Rows without the columns (written before
/// they existed) are left out.
pub fn error_calibration<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[Row],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    scatter_panel(
        &left,
        rows,
        |r| r.bound_median,
        "Certified bound (median over reviews)",
        "certified bound (logit units)",
        "y = x (bound = error)",
    )?;
    scatter_panel(
        &right,
        rows,
        |r| r.estimate_mean,
        "First-order estimate (mean; not a bound)",
        "first-order estimate (logit units)",
        "y = x (estimate = error)",
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// One log-log panel of [`error_calibration`]: `y(row)` against `logit_err_mean`.
fn scatter_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[Row],
    y: fn(&Row) -> f64,
    title: &str,
    y_desc: &str,
    diag_label: &str,
) -> Result<()> {
    let pts: Vec<(&Row, f64, f64)> = rows
        .iter()
        .filter(|r| r.method != FULL)
        .map(|r| (r, r.logit_err_mean, y(r)))
        .filter(|p| p.1.is_finite() && p.2.is_finite() && p.1 > 0.0 && p.2 > 0.0)
        .collect();
    // Each axis spans its own data (the bound is many decades above the error; a shared range
    // would crowd every point into one corner).
    let span = |v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |a, x| {
            (a.0.min(x), a.1.max(x))
        });
        if lo.is_finite() {
            (lo / 2.0, hi * 2.0)
        } else {
            (1e-3, 1e3)
        }
    };
    let (x_lo, x_hi) = span(&mut pts.iter().map(|p| p.1));
    let (y_lo, y_hi) = span(&mut pts.iter().map(|p| p.2));
    // The diagonal, where it crosses the frame.
    let (d_lo, d_hi) = (x_lo.max(y_lo), x_hi.min(y_hi));
    let caption = if d_lo < d_hi || pts.is_empty() {
        title.to_string()
    } else {
        format!("{title}; y = x lies below the frame")
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 19))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("measured mean logit error (2-norm, logit units)")
        .y_desc(y_desc)
        .x_label_formatter(&log_tick)
        .y_label_formatter(&log_tick)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    if d_lo < d_hi {
        chart
            .draw_series(LineSeries::new(
                [(d_lo, d_lo), (d_hi, d_hi)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label(diag_label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK));
    }
    // Hollow rings of growing radius per method: methods that give the same reduced model (and so
    // the same point) show as concentric rings instead of hiding each other.
    for (i, m) in methods_in(rows).into_iter().enumerate() {
        let radius = 4 + 2 * i as i32;
        let color = method_color(&m);
        let mine: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| p.0.method == m)
            .map(|p| (p.1, p.2))
            .collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(
                mine.iter()
                    .map(|&p| Circle::new(p, radius, color.stroke_width(2))),
            )
            .map_err(err)?
            .label(m.clone())
            .legend(move |(x, y)| Circle::new((x + 12, y), 5, color.stroke_width(2)));
    }
    if !pts.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Label of a log-axis tick: only mantissas 1, 2 and 5 are written (`2e-1`), so that the dense
/// ticks of a short decade do not overprint each other.
fn log_tick(x: &f64) -> String {
    let t = format!("{x:.0e}");
    if t.starts_with(['1', '2', '5']) {
        t
    } else {
        String::new()
    }
}

/// Up to three ratios to show: the smallest, one in the middle and the largest.
fn pick_ratios(kept: &[KeptModes]) -> Vec<f64> {
    let mut rs: Vec<f64> = kept
        .iter()
        .filter(|k| k.method != FULL)
        .map(|k| k.ratio)
        .collect();
    rs.sort_by(f64::total_cmp);
    rs.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    match rs.len() {
        0..=3 => rs,
        n => vec![rs[0], rs[n / 2], rs[n - 1]],
    }
}

/// Kept complex modes per layer, one panel per ratio, one line per method.
pub fn modes_per_layer<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    kept: &[KeptModes],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let parsed: Vec<(&KeptModes, Vec<usize>)> = kept
        .iter()
        .map(|k| Ok((k, k.counts()?)))
        .collect::<Result<_>>()?;
    let full = parsed.iter().find(|p| p.0.method == FULL);
    let n_layers = parsed.iter().map(|p| p.1.len()).max().unwrap_or(1).max(1);
    let y_max = parsed
        .iter()
        .flat_map(|p| p.1.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.7; // room above the lines for the legend
    let ratios = pick_ratios(kept);
    let (title_area, body) = root.split_vertically(50);
    title_area
        .titled(
            "Kept SSM modes per layer (complex modes; each is a conjugate pair of states)",
            (FONT, 22),
        )
        .map_err(err)?;
    let panels = body.split_evenly((1, ratios.len().max(1)));
    let methods: Vec<String> = {
        let mut ms: Vec<String> = method_order()
            .filter(|m| parsed.iter().any(|p| p.0.method == *m))
            .map(|m| m.to_string())
            .collect();
        for p in &parsed {
            if p.0.method != FULL && !ms.contains(&p.0.method) {
                ms.push(p.0.method.clone());
            }
        }
        ms
    };
    for (panel, &ratio) in panels.iter().zip(ratios.iter()) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{:.0} % of modes removed", ratio * 100.0),
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.3..(n_layers as f64 - 0.7), 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("layer (input side = 0)")
            .y_desc("kept modes (count)")
            .x_labels(n_layers.min(12))
            .x_label_formatter(&|x| format!("{:.0}", x))
            .axis_desc_style((FONT, 15))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        if let Some(f) = full {
            let pts: Vec<(f64, f64)> =
                f.1.iter()
                    .enumerate()
                    .map(|(i, &k)| (i as f64, k as f64))
                    .collect();
            chart
                .draw_series(DashedLineSeries::new(pts, 8, 5, BLACK.stroke_width(2)))
                .map_err(err)?
                .label("full")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        let n_methods = methods.len().max(1) as f64;
        for (mi, m) in methods.iter().enumerate() {
            // a small horizontal offset per method so that equal counts stay visible
            let dx = (mi as f64 - (n_methods - 1.0) / 2.0) * 0.025;
            let Some(p) = parsed
                .iter()
                .find(|p| p.0.method == *m && (p.0.ratio - ratio).abs() < 1e-9)
            else {
                continue;
            };
            let color = method_color(m);
            let pts: Vec<(f64, f64)> =
                p.1.iter()
                    .enumerate()
                    .map(|(i, &k)| (i as f64 + dx, k as f64))
                    .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(m.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|&q| Circle::new(q, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// `1234567` → `1.23M`, `45600` → `45.6k`.
fn format_count(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x.abs() >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_own_colour() {
        let mut cs: Vec<_> = mor::Method::ALL
            .iter()
            .map(|&m| {
                let c = method_rgb(m);
                (c.0, c.1, c.2)
            })
            .collect();
        cs.sort_unstable();
        cs.dedup();
        assert_eq!(cs.len(), mor::Method::ALL.len());
    }

    #[test]
    fn recipes_take_shades_of_their_reducer() {
        let bt = method_color("bt");
        assert_eq!(method_color("bt+refit"), bt);
        let (dark, light) = (method_color("bt@sens"), method_color("bt[1=modal]"));
        assert!(dark.0 <= bt.0 && dark.1 <= bt.1 && dark.2 <= bt.2 && dark != bt);
        assert!(light.0 >= bt.0 && light.1 >= bt.1 && light.2 >= bt.2 && light != bt);
        assert_ne!(method_color("bt[1=modal]@sens+refit"), light);
        assert_eq!(method_color("bt[1-2=modal]"), light);
    }

    #[test]
    fn allocations_of_one_reducer_have_their_own_shades() {
        for &m in &mor::Method::ALL {
            let base = m.name();
            let mut cs: Vec<_> = mor::alloc::Allocation::ALL
                .iter()
                .filter(|&&a| a != mor::alloc::Allocation::Uniform)
                .map(|a| format!("{base}@{}", a.name()))
                .chain([base.to_string(), format!("{base}[1=modal]")])
                .map(|r| {
                    let c = method_color(&r);
                    (c.0, c.1, c.2)
                })
                .collect();
            let n = cs.len();
            cs.sort_unstable();
            cs.dedup();
            assert_eq!(cs.len(), n, "{base}: two recipes share a colour");
        }
    }
    use crate::results::ResultsStore;

    fn row(method: &str, ratio: f64, total: usize, acc: f64, err: f64, bound: f64) -> Row {
        Row {
            method: method.into(),
            ratio,
            kept_modes: 10,
            ssm_params: total / 2,
            total_params: total,
            param_reduction: 1.0 - total as f64 / 1000.0,
            ssm_param_reduction: 1.0 - total as f64 / 1000.0,
            accuracy: acc,
            n_eval: 64,
            logit_err_mean: err / 2.0,
            logit_err_max: err,
            bound_max: bound,
            bound_holds: bound >= err,
            stable: true,
            reduce_seconds: 0.1,
            eval_seconds: 0.1,
            infer_tokens_per_s: 1000.0,
            bound_median: f64::NAN,
            bound_over_error_median: f64::NAN,
            estimate_reviews: 0,
            estimate_mean: f64::NAN,
            estimate_conservative_mean: f64::NAN,
            estimate_over_error_median: f64::NAN,
        }
    }

    #[test]
    fn plots_from_csv_are_non_empty_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(dir.path());
        store
            .upsert(
                &row(FULL, 0.0, 1000, 0.8, 0.0, 0.0),
                &KeptModes::new(FULL, 0.0, &[8, 8]),
            )
            .unwrap();
        for (i, m) in ["modal", "bt", "lqo-h2"].iter().enumerate() {
            for (j, r) in [0.25, 0.5, 0.75].iter().enumerate() {
                let total = 1000 - 200 * (j + 1);
                let acc = 0.8 - 0.05 * (j as f64) - 0.01 * i as f64;
                store
                    .upsert(
                        &row(
                            m,
                            *r,
                            total,
                            acc,
                            0.01 * (j + 1) as f64,
                            0.1 * (i + 1) as f64,
                        ),
                        &KeptModes::new(m, *r, &[8 - 2 * j, 6 - j - i]),
                    )
                    .unwrap();
            }
        }
        // an unstable point with NaN accuracy must not break the figures
        store
            .upsert(
                &row("tlh2", 0.5, 600, f64::NAN, f64::NAN, 1.0),
                &KeptModes::new("tlh2", 0.5, &[4, 4]),
            )
            .unwrap();
        let rows = store.rows().unwrap();
        let kept = store.kept().unwrap();
        let files = plot_all(&rows, &kept, dir.path()).unwrap();
        assert_eq!(files.len(), 10, "{files:?}");
        for f in &files {
            let len = std::fs::metadata(f).unwrap().len();
            assert!(len > 5_000, "{} is only {len} bytes", f.display());
        }
        let png = std::fs::read(dir.path().join("accuracy_vs_params.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(dir.path().join("accuracy_vs_params.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("lqo-h2"));
        assert!(svg.contains("total trainable parameters"));
        // The paper's figure on both readings, with the published anchors on the SSM one.
        let ssm = std::fs::read_to_string(dir.path().join("paper_figure_ssm.svg")).unwrap();
        assert!(ssm.contains("SSM parameters removed") && ssm.contains("LAST (published)"));
        let total = std::fs::read_to_string(dir.path().join("paper_figure_total.svg")).unwrap();
        assert!(total.contains("all trainable parameters removed"));
        assert!(!total.contains("LAST (published)") && total.contains("paper v2 claim"));
    }

    #[test]
    fn a_figure_that_cannot_be_written_is_named_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            row(FULL, 0.0, 1000, 0.8, 0.0, 0.0),
            row("modal", 0.5, 600, 0.7, 0.01, 0.1),
        ];
        let kept = vec![
            KeptModes::new(FULL, 0.0, &[8, 8]),
            KeptModes::new("modal", 0.5, &[4, 4]),
        ];
        // A directory where a PNG should go: refused naming it, nothing else left behind, the
        // figures before it written whole.
        let blocker = dir.path().join("error_calibration.png");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("keep.txt"), b"mine").unwrap();
        let e = mor::error::one_line(plot_all(&rows, &kept, dir.path()).unwrap_err().as_ref());
        assert!(
            e.contains(&format!("cannot write the figure {}", blocker.display())),
            "{e}"
        );
        assert!(
            !e.contains("Kind") && !e.contains("Os {"),
            "a Debug dump: {e}"
        );
        assert_eq!(std::fs::read(blocker.join("keep.txt")).unwrap(), b"mine");
        let png = std::fs::read(dir.path().join("accuracy_vs_params.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let hidden: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        // The same for the SVG, and for a directory that does not exist.
        let svg = dir.path().join("x.svg");
        std::fs::create_dir(&svg).unwrap();
        let e = format!(
            "{:#}",
            write_svg(&svg, (100, 100), |r| accuracy_vs_params(r, &rows)).unwrap_err()
        );
        assert!(
            e.contains("cannot write the figure") && e.contains("x.svg"),
            "{e}"
        );
        let missing = dir.path().join("missing/a.png");
        let e = format!(
            "{:#}",
            write_png(&missing, (100, 100), |r| accuracy_vs_params(r, &rows)).unwrap_err()
        );
        assert!(e.contains(&missing.display().to_string()), "{e}");
        // A drawing error: the temporary file the backend may have saved is removed.
        let p = dir.path().join("fails.png");
        let e = write_png(&p, (100, 100), |r| {
            r.fill(&WHITE).map_err(err)?;
            anyhow::bail!("no data")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("fails.png"), "{e:#}");
        assert!(!p.exists() && !png_temp_path(&p).unwrap().exists());
        let hidden = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(hidden, 0);
    }

    #[test]
    fn pick_ratios_takes_ends_and_middle() {
        let kept: Vec<KeptModes> = [0.2, 0.4, 0.5, 0.6, 0.9]
            .iter()
            .map(|&r| KeptModes::new("bt", r, &[1]))
            .collect();
        assert_eq!(pick_ratios(&kept), vec![0.2, 0.5, 0.9]);
    }
}
