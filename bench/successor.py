"""Succession scan of every head of the embedded model: one vectorised pass vs a per-head Python loop doing the same arithmetic.

Both sides start from the same stacked weights and extended embeddings (loaded once, not timed) and compute, for every
head, RMSNorm_1(x) W_V W_O, the logits on the task tokens, and the within-subtask argmax per pair. Prints the ratio
(goal: >= 10x) and the absolute time of the vectorised scan. Usage: .venv/bin/python bench/successor.py [--repeats N]
"""
import argparse, time

import torch

from seqlab.heads import (extended_embeddings, folded_unembed, head_inputs, ordinal_tasks, ov_outputs, stacked_ov,
                          succession_pairs, succession_scores)
from seqlab.zoo import load


def vectorised(x, W_V, W_O, W_U, ids, pairs):
    return succession_scores(ov_outputs(x, W_V, W_O), W_U, ids, pairs)["pooled"]


def per_head_loop(x, W_V, W_O, W_U, ids, pairs):
    L, H = W_V.shape[:2]
    out = torch.empty(L, H)
    for l in range(L):
        for h in range(H):
            o = x[l] @ W_V[l, h] @ W_O[l, h]                                   # [n, d_model]: one head's OV output
            out[l, h] = succession_scores(o[None, None], W_U, ids, pairs)["pooled"][0, 0]
    return out


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); r = fn(); times.append(time.perf_counter() - t)
    return min(times), r


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the measurements to this file"); args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load("smollm2-135m", progress=False)
    pairs = succession_pairs(model.encode, ordinal_tasks())
    ids = torch.tensor(sorted({t for s in pairs.subtasks.values() for t in s["ids"]}))
    W_V, W_O = stacked_ov(model)
    x = head_inputs(model, extended_embeddings(model, ids, "mlp0"))
    W_U = folded_unembed(model)
    n_heads = W_V.shape[0] * W_V.shape[1]
    t_vec, s_vec = best_of(lambda: vectorised(x, W_V, W_O, W_U, ids, pairs), args.repeats)
    t_loop, s_loop = best_of(lambda: per_head_loop(x, W_V, W_O, W_U, ids, pairs), args.repeats)
    agree = (s_vec == s_loop).float().mean().item()
    print(f"succession scan, {n_heads} heads x {len(ids)} task tokens, {pairs.n_pairs} pairs ({torch.get_num_threads()} threads, best of {args.repeats})")
    print(f"  vectorised : {t_vec * 1e3:8.1f} ms")
    print(f"  per-head   : {t_loop * 1e3:8.1f} ms")
    print(f"  ratio      : {t_loop / t_vec:8.1f}x   (goal >= 10x); scores identical for {agree:.1%} of heads")
    if args.json:
        import json, pathlib
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps({"vectorised_s": t_vec, "per_head_s": t_loop, "ratio": t_loop / t_vec,
                                                       "heads_identical": agree}, indent=1))


if __name__ == "__main__":
    main()
