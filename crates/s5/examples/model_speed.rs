//! Quick forward/backward timing of the S5 model (a benchmark, not a test).
//!
//! `cargo run --release -p s5 --example model_speed -- [batch] [len...]`; defaults: the small
//! config (4 layers, H = P = 128, J = 8, bidirectional, BatchNorm, half_glu2), batch 16,
//! lengths 1024 and 4096. Prints median milliseconds of an eval forward, a train forward and
//! its backward, and the scan op alone.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use s5::scan::{Direction, diag_scan};
use s5::{GateKind, Mode, ModelConfig, NormKind, S5Model};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    s5::perf::keep_freed_buffers();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let b = args.first().copied().unwrap_or(16);
    let lens: Vec<usize> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1024, 4096]
    };
    let cfg = ModelConfig {
        vocab_size: 257,
        n_classes: 2,
        d_model: 128,
        n_layers: 4,
        ssm_size: 128,
        blocks: 8,
        bidirectional: true,
        norm: NormKind::Batch,
        gate: GateKind::HalfGlu2,
        dropout: 0.1,
        dt_min: 0.001,
        dt_max: 0.1,
    };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let model = S5Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    println!(
        "params {} flops/token {:.3e}",
        model.n_trainable_params(),
        s5::model::flops_per_token(&cfg)
    );
    for &l in &lens {
        let toks: Vec<u32> = (0..b * l).map(|i| (i * 7919 % 256 + 1) as u32).collect();
        let tokens = Tensor::from_vec(toks, (b, l), &dev)?;
        let lengths = Tensor::from_vec(vec![l as u32; b], b, &dev)?;
        let labels = Tensor::from_vec((0..b as u32).map(|i| i % 2).collect::<Vec<_>>(), b, &dev)?;
        let (mut fe, mut ft, mut bw, mut sf, mut sb) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let lam = Tensor::from_vec([0.9f32, 0.1].repeat(64), (64, 2), &dev)?;
        for it in 0..4 {
            let t = Instant::now();
            model.forward(&tokens, &lengths, Mode::Eval)?;
            let a = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let logits = model.forward(&tokens, &lengths, Mode::Train { seed: it })?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            let c = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let _g = loss.backward()?;
            let d = t.elapsed().as_secs_f64() * 1e3;
            let v = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, 64, 2), &dev)?)?;
            let t = Instant::now();
            let x = diag_scan(&lam, &v, None, Direction::Both, None)?;
            let e = t.elapsed().as_secs_f64() * 1e3;
            let s = x.sum_all()?;
            let t = Instant::now();
            let _g = s.backward()?;
            let f = t.elapsed().as_secs_f64() * 1e3;
            if it > 0 {
                fe.push(a);
                ft.push(c);
                bw.push(d);
                sf.push(e);
                sb.push(f);
            }
        }
        let (fe, ft, bw) = (median(fe), median(ft), median(bw));
        println!(
            "b={b} l={l}: eval fwd {fe:.0} ms ({:.0} tok/s), train fwd {ft:.0} ms + bwd {bw:.0} ms ({:.0} tok/s); scan(both, P/2=64) fwd {:.1} ms, bwd(+sum) {:.1} ms",
            (b * l) as f64 / fe * 1e3,
            (b * l) as f64 / (ft + bw) * 1e3,
            median(sf),
            median(sb)
        );
    }
    Ok(())
}
