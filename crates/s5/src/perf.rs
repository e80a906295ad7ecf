//! Performance measurement (a benchmark, not a test): inference and training tokens/s of a model
//! on synthetic tokens, the machine's candle f32 matmul rate at the model's shapes, and the
//! model's useful GFLOP/s from counted FLOPs. Backs `bench perf --config <file> --json`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::optim::{AdamParams, AdamW, StepRates, default_param_group};
use crate::train::{Classifier, loss_and_correct};
use crate::{ModelConfig, Result};

pub use crate::model::flops_per_token;

/// Makes glibc's allocator keep every freed buffer in its heap for reuse, instead of returning
/// large blocks to the OS (its default above an adaptive threshold of at most 32 MiB, via
/// `mmap`/`munmap`). Candle allocates a fresh buffer for every op's output — a `[16, 2048, 128]`
/// f32 activation is 16 MiB, a `[50, 1536, 256]` one 75 MiB — so with the default every op pays
/// page faults and kernel zero-fill.
///
/// Settings: no `mmap` for any block (`M_MMAP_MAX = 0`); one arena for all threads
/// (`M_ARENA_MAX = 1`, so a block freed by one rayon worker is reused by the next, and a
/// per-thread arena cannot hold blocks above 64 MiB); never trim the heap
/// (`M_TRIM_THRESHOLD = -1`: a training step frees GiBs of activations at its end, which a finite
/// threshold hands back to the OS only to fault them in again in the next step); grow it 256 MiB
/// at a time (`M_TOP_PAD`).
///
/// Measured on 2 cores: an evaluation of 1,000 IMDb reviews took 15.5 s of system time with
/// glibc's defaults against 1.0 s with a fixed 32 MiB threshold. With that threshold a training
/// step of the S5 IMDb model (`bench perf`, 2 reps) ran 8.6–9.5k tokens/s at batch 16 × 4,096
/// and 8.4–8.6k at 50 × 1,536 (21–29 s of system time in 33–41 s); with these settings 14.0k and
/// 13.5k (6 s in 28–32 s).
///
/// Call once at the start of a process, before threads allocate; the cost is a resident heap as
/// large as the peak use. No-op outside Linux/glibc. Returns whether the allocator accepted every
/// setting.
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            (libc::M_MMAP_MAX, 0),
            (libc::M_ARENA_MAX, 1),
            (libc::M_TRIM_THRESHOLD, -1),
            (libc::M_TOP_PAD, 256 << 20),
        ];
        // Every setting is applied even if an earlier one is rejected.
        // SAFETY: `mallopt` only changes glibc's allocation parameters; it is called with valid
        // parameter codes and has no memory-safety preconditions.
        settings
            .map(|(param, value)| unsafe { libc::mallopt(param, value) } == 1)
            .iter()
            .all(|&accepted| accepted)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// What [`measure`] reports. Field names are the JSON keys of `bench perf --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfReport {
    /// Tokens (batch × len) per second of an evaluation forward pass.
    pub infer_tokens_per_s: f64,
    /// Tokens per second of a training step (forward, backward, AdamW update).
    pub train_tokens_per_s: f64,
    /// Best f32 GFLOP/s of candle's matmul at the model's shapes ([b·l, H]×[H, H] and
    /// [b·l, H]×[H, P]) on this machine.
    pub matmul_peak_gflops: f64,
    /// Useful GFLOP/s of inference: `infer_tokens_per_s × flops_per_token`.
    pub infer_gflops: f64,
    /// Useful GFLOP/s of training: `train_tokens_per_s × 3 × flops_per_token`.
    pub train_gflops: f64,
    /// Counted forward FLOPs per token ([`flops_per_token`]); training counts 3×.
    pub flops_per_token: f64,
    /// Batch size measured.
    pub batch: usize,
    /// Sequence length measured.
    pub len: usize,
    /// Threads used (rayon pool size).
    pub threads: usize,
    /// Median seconds of one inference forward pass.
    pub infer_seconds: f64,
    /// Median seconds of one training step.
    pub train_seconds: f64,
}

/// Least number of timed matmuls per shape in [`measure_model`]'s peak.
pub const PEAK_REPS: usize = 50;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite timings"));
    v[v.len() / 2]
}

/// Seconds of one call of `f`.
fn timed<F: FnMut() -> Result<()>>(mut f: F) -> Result<f64> {
    let t0 = Instant::now();
    f()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// The operands of the peak matmuls: `[rows, H]` and, per shape, `[H, n]` for n ∈ {H, P}.
struct PeakShapes {
    a: Tensor,
    b: Vec<Tensor>,
}

impl PeakShapes {
    fn new(rows: usize, h: usize, p: usize) -> Result<Self> {
        let dev = Device::Cpu;
        Ok(PeakShapes {
            a: Tensor::randn(0f32, 1.0, (rows, h), &dev)?,
            b: [h, p]
                .into_iter()
                .map(|n| Tensor::randn(0f32, 1.0, (h, n), &dev))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// Seconds of one product of each shape.
    fn time_each(&self) -> Result<Vec<f64>> {
        self.b
            .iter()
            .map(|b| {
                timed(|| {
                    // Eager on the CPU; reading the dims keeps the product from being optimised away.
                    let _ = self.a.matmul(b)?.dims();
                    Ok(())
                })
            })
            .collect()
    }

    /// Best GFLOP/s over the shapes, from each shape's timings (median).
    fn gflops(&self, per_shape: Vec<Vec<f64>>) -> f64 {
        let (rows, h) = (self.a.dims()[0] as f64, self.a.dims()[1] as f64);
        self.b
            .iter()
            .zip(per_shape)
            .map(|(b, t)| 2.0 * rows * h * b.dims()[1] as f64 / median(t) / 1e9)
            .fold(0.0, f64::max)
    }
}

/// Best f32 matmul GFLOP/s of candle at the model's shapes: [m, H]×[H, H] and [m, H]×[H, P]
/// with m = `rows` (batch × len), median of `reps` runs each after one warm-up.
///
/// # Errors
/// Candle errors.
pub fn matmul_peak_gflops(rows: usize, h: usize, p: usize, reps: usize) -> Result<f64> {
    let shapes = PeakShapes::new(rows, h, p)?;
    shapes.time_each()?;
    let mut per_shape = vec![Vec::new(); 2];
    for _ in 0..reps.max(1) {
        for (v, t) in per_shape.iter_mut().zip(shapes.time_each()?) {
            v.push(t);
        }
    }
    Ok(shapes.gflops(per_shape))
}

/// Synthetic full-length token batch: tokens uniform in 1..vocab, every length = `len`,
/// labels alternating.
///
/// # Errors
/// Candle errors.
pub fn synthetic_batch(
    vocab: usize,
    batch: usize,
    len: usize,
    seed: u64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tokens: Vec<u32> = (0..batch * len)
        .map(|_| rng.random_range(1..vocab.max(2) as u32))
        .collect();
    Ok((
        Tensor::from_vec(tokens, (batch, len), &dev)?,
        Tensor::from_vec(vec![len as u32; batch], batch, &dev)?,
        Tensor::from_vec((0..batch as u32).map(|i| i % 2).collect(), batch, &dev)?,
    ))
}

/// Inference throughput (tokens/s) of `model` on the fixed synthetic batch
/// [`synthetic_batch`]`(vocab, batch, len, 0)` (evaluation mode), on the current rayon pool: the
/// median of `reps` timed passes after one warm-up pass. The same batch and pool for every model
/// makes the figures of a full model and its reductions comparable.
///
/// # Errors
/// Candle errors; [`Error::Config`](crate::Error::Config) for a zero `batch`, `len` or `reps`.
pub fn infer_tokens_per_s<M: Classifier + ?Sized>(
    model: &M,
    vocab: usize,
    batch: usize,
    len: usize,
    reps: usize,
) -> Result<f64> {
    if batch == 0 || len == 0 || reps == 0 {
        return Err(crate::Error::Config(format!(
            "infer_tokens_per_s: batch ({batch}), len ({len}) and reps ({reps}) must be ≥ 1"
        )));
    }
    let (tokens, lengths, _) = synthetic_batch(vocab, batch, len, 0)?;
    let mut infer = || -> Result<()> {
        let l = model.logits(&tokens, &lengths, None)?;
        let _ = l.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    infer()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        t.push(timed(&mut infer)?);
    }
    Ok((batch * len) as f64 / median(t))
}

/// Measure `model` (whose variables live in `varmap`, built from `cfg`) at `batch` × `len` on
/// the current rayon pool. After one warm-up round, each of `reps` rounds times one inference
/// pass, one full training step with AdamW and `⌈PEAK_REPS / reps⌉` products of each peak matmul
/// shape; every figure is a median over the rounds. Interleaving puts the numerator and the
/// denominator of "fraction of peak" under the same host load: on this shared machine the load
/// moves whole runs by ±20 %, and a peak timed on its own, before or after the model, moved the
/// fraction by up to 10 points. Call it on a thread with a large stack (backward of deep graphs
/// recurses; see [`crate::train::with_large_stack`]).
///
/// # Errors
/// Candle errors.
pub fn measure_model<M: Classifier + ?Sized>(
    model: &M,
    varmap: &VarMap,
    cfg: &ModelConfig,
    batch: usize,
    len: usize,
    reps: usize,
) -> Result<PerfReport> {
    let (tokens, lengths, labels) = synthetic_batch(cfg.vocab_size, batch, len, 0)?;
    let mut opt = AdamW::new(varmap, default_param_group, AdamParams::default())?;
    let rates = StepRates {
        lr: 1e-4,
        ssm_lr: 1e-4,
        weight_decay: 0.0,
    };
    let mut infer = || -> Result<()> {
        let l = model.logits(&tokens, &lengths, None)?;
        let _ = l.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    let mut step = 0u64;
    let mut train = || -> Result<()> {
        step += 1;
        let logits = model.logits(&tokens, &lengths, Some(step))?;
        let (loss, _) = loss_and_correct(&logits, &labels)?;
        let grads = loss.backward()?;
        opt.step(&grads, rates, 1.0)?;
        Ok(())
    };
    let peak = PeakShapes::new(batch * len, cfg.d_model, cfg.ssm_size)?;
    let reps = reps.max(1);
    // One matmul takes milliseconds: time many so that the peak is not a noisy denominator.
    let peak_per_round = PEAK_REPS.div_ceil(reps);
    let (mut infer_t, mut train_t) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    let mut peak_t = vec![Vec::new(); 2];
    for round in 0..=reps {
        let (ti, tt) = (timed(&mut infer)?, timed(&mut train)?);
        // The first product after a model pass pays for page faults of its fresh output buffer
        // (the model's buffers took the heap): not counted, as in a steady run of matmuls.
        peak.time_each()?;
        let mut tp = Vec::with_capacity(peak_per_round);
        for _ in 0..peak_per_round {
            tp.push(peak.time_each()?);
        }
        if round > 0 {
            infer_t.push(ti);
            train_t.push(tt);
            for t in tp {
                peak_t.iter_mut().zip(t).for_each(|(v, t)| v.push(t));
            }
        }
    }
    let (infer_seconds, train_seconds) = (median(infer_t), median(train_t));
    let fpt = flops_per_token(cfg);
    let tokens_n = (batch * len) as f64;
    let infer_tps = tokens_n / infer_seconds;
    let train_tps = tokens_n / train_seconds;
    Ok(PerfReport {
        infer_tokens_per_s: infer_tps,
        train_tokens_per_s: train_tps,
        matmul_peak_gflops: peak.gflops(peak_t),
        infer_gflops: infer_tps * fpt / 1e9,
        train_gflops: train_tps * 3.0 * fpt / 1e9,
        flops_per_token: fpt,
        batch,
        len,
        threads: rayon::current_num_threads(),
        infer_seconds,
        train_seconds,
    })
}

/// Build an S5 model of `cfg` (f32, CPU, init seed 0) and [`measure_model`] it at `batch` × `len`
/// on a rayon pool of `threads` threads (`None`: the global pool, normally one per core).
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) for an invalid model config or thread pool; candle
/// errors.
pub fn measure(
    cfg: &ModelConfig,
    batch: usize,
    len: usize,
    threads: Option<usize>,
    reps: usize,
) -> Result<PerfReport> {
    let run = || -> Result<PerfReport> {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = crate::S5Model::new(cfg, vb)?;
        measure_model(&model, &varmap, cfg, batch, len, reps)
    };
    match threads {
        None => crate::train::with_large_stack(run),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .stack_size(256 << 20)
            .build()
            .map_err(|e| crate::Error::Config(format!("cannot build a pool of {n} threads: {e}")))?
            .install(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GateKind, NormKind};

    /// The report's derived fields follow from its measured ones (the figures themselves are
    /// timings: not asserted here).
    #[test]
    fn report_is_consistent() {
        let cfg = ModelConfig {
            vocab_size: 20,
            n_classes: 2,
            d_model: 8,
            n_layers: 2,
            ssm_size: 8,
            blocks: 2,
            bidirectional: true,
            norm: NormKind::Batch,
            gate: GateKind::HalfGlu2,
            dropout: 0.1,
            dt_min: 0.001,
            dt_max: 0.1,
        };
        let r = measure(&cfg, 2, 16, Some(2), 2).unwrap();
        assert_eq!((r.batch, r.len, r.threads), (2, 16, 2));
        assert_eq!(r.flops_per_token, flops_per_token(&cfg));
        for v in [r.infer_seconds, r.train_seconds, r.matmul_peak_gflops] {
            assert!(v.is_finite() && v > 0.0, "{r:?}");
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        assert!(close(r.infer_tokens_per_s, 32.0 / r.infer_seconds));
        assert!(close(r.train_tokens_per_s, 32.0 / r.train_seconds));
        assert!(close(
            r.infer_gflops,
            r.infer_tokens_per_s * r.flops_per_token / 1e9
        ));
        assert!(close(
            r.train_gflops,
            3.0 * r.train_tokens_per_s * r.flops_per_token / 1e9
        ));
    }

    /// glibc accepts every allocator setting (a rejected one would silently leave the default,
    /// with its page faults, in place).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn allocator_settings_are_accepted() {
        assert!(keep_freed_buffers());
        // A block above the old 32 MiB mmap threshold, freed and taken again, stays usable.
        for fill in [1u8, 2] {
            let v = vec![fill; 80 << 20];
            assert!(v.iter().step_by(4096).all(|&b| b == fill));
        }
    }
}
