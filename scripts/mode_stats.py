#!/usr/bin/env python3
"""Per-layer mode statistics of S5 checkpoints (a diagnostic; needs numpy).

For every layer of each `model.safetensors` given: the median ZOH step Δ, the time constants
τ = −1 / ln|λ̄| of the 96 modes in steps (λ̄ = exp(ΛΔ), S5 Eq. 6) and how many exceed the sequence
length L, and how many of the `keep` modes with the largest h2 contribution are also among the
`keep` modes with the largest H∞ score, what share of the layer's summed h2 contributions each
of the two sets keeps and their median time constants. Per mode i (rank-one, both scan directions' output
matrices C̃ and C̃₂ stacked): h2 contribution ‖b̄ᵢ‖²‖c̃ᵢ‖² / (1 − |λ̄ᵢ|²) and H∞ score
‖b̄ᵢ‖‖c̃ᵢ‖ / (1 − |λ̄ᵢ|), with b̄ᵢ = (λ̄ᵢ − 1)/Λᵢ · B̃ᵢ (ZOH). These are the per-mode quantities the
modal and H∞-pruning methods rank by (LAST's per-layer normalisation does not change the order
within a layer).

Usage: scripts/mode_stats.py [--len L] [--ratio R] CHECKPOINT/model.safetensors ...
"""
import argparse
import json
import struct

import numpy as np


def load_safetensors(path):
    """All tensors of a safetensors file as float64 numpy arrays, by name."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} has dtype {meta['dtype']}, expected F32")
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a: 8 + n + b], dtype=np.float32).reshape(meta["shape"]).astype(np.float64)
    return out


def complex_of(t):
    """[..., 2] real/imaginary pairs -> complex array [...]."""
    return t[..., 0] + 1j * t[..., 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="model.safetensors files of full (unreduced) models")
    ap.add_argument("--len", type=int, default=4096, help="sequence length L (default 4096)")
    ap.add_argument("--ratio", type=float, default=0.6, help="fraction of modes removed (default 0.6)")
    args = ap.parse_args()
    for path in args.checkpoints:
        w = load_safetensors(path)
        layers = sorted({int(k.split(".")[1]) for k in w if k.startswith("layers.") and ".seq.Lambda_re" in k})
        if not layers:
            raise SystemExit(f"{path}: no layers.*.seq.Lambda_re (a reduced checkpoint? use the full model)")
        print(path)
        for l in layers:
            g = lambda s: w[f"layers.{l}.seq.{s}"]
            lam = g("Lambda_re") + 1j * g("Lambda_im")
            step = np.exp(g("log_step")[:, 0])
            lam_bar = np.exp(lam * step)
            b_bar = ((lam_bar - 1) / lam)[:, None] * complex_of(g("B"))
            c_sq = np.linalg.norm(complex_of(g("C")), axis=0) ** 2
            if f"layers.{l}.seq.C2" in w:
                c_sq = c_sq + np.linalg.norm(complex_of(g("C2")), axis=0) ** 2
            gain = np.linalg.norm(b_bar, axis=1) * np.sqrt(c_sq)
            mag = np.abs(lam_bar)
            h2 = gain ** 2 / (1 - mag ** 2)
            hinf = gain / (1 - mag)
            tau = -1 / np.log(mag)
            keep = int(round(len(lam) * (1 - args.ratio)))
            top_h2, top_hinf = np.argsort(-h2)[:keep], np.argsort(-hinf)[:keep]
            both = len(set(top_h2) & set(top_hinf))
            # Share of the layer's summed per-mode h2 contributions each top set keeps (cross
            # terms between modes ignored), and the median time constant of each set.
            share = lambda idx: h2[idx].sum() / h2.sum()
            print(f"  layer {l + 1}: median step {np.median(step):.3g}; tau (steps) min {tau.min():.3g}, "
                  f"median {np.median(tau):.3g}, max {tau.max():.3g}; modes with tau > {args.len}: "
                  f"{(tau > args.len).sum()}; top-{keep} by h2 and by Hinf share {both}; "
                  f"they keep {share(top_h2):.1%} / {share(top_hinf):.1%} of the summed h2 "
                  f"contributions, median tau {np.median(tau[top_h2]):.3g} / {np.median(tau[top_hinf]):.3g}")


if __name__ == "__main__":
    main()
