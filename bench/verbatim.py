"""Verbatim probe scoring: batched (padded, sorted by length) versus one stimulus at a time, on the embedded model.

Both paths score the same stimuli in the same run; the script prints the ratio of their wall times, the stimuli
per second of each, and the largest difference between their word surprisals.

    python bench/verbatim.py [--n 48] [--batch-size 8] [--intervening 1]
"""
import argparse, dataclasses, time

import numpy as np
import torch

from seqlab.verbatim import VerbatimConfig, grid_stimuli, score_stimuli
from seqlab.zoo import load


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="stimuli to score (from the list-length sweep)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--intervening", type=int, default=1, help="intervening-text length key 1..5")
    ap.add_argument("--json", help="also write the measurements to this file")
    a = ap.parse_args()
    model = load("smollm2-135m")
    cfg = dataclasses.replace(VerbatimConfig(), n_per_cell=8, interveners=(a.intervening,), default_intervening=a.intervening,
                              scenarios=("intact",), sweep_list_types=("arbitrary",))
    stims = grid_stimuli(cfg)
    stims = [stims[i] for i in np.random.default_rng(0).choice(len(stims), min(a.n, len(stims)), replace=False)]
    n_tok = sum(len(model.encode(s.text)) for s in stims)
    score_stimuli(model, stims[:2], batch_size=2)  # warm-up: first-call allocations are not the method's cost
    t = time.perf_counter(); single = score_stimuli(model, stims, batch_size=1); t_single = time.perf_counter() - t
    t = time.perf_counter(); batched = score_stimuli(model, stims, batch_size=a.batch_size); t_batched = time.perf_counter() - t
    diff = max(float(np.abs(np.concatenate([f1 - f2, s1 - s2])).max()) for (f1, s1), (f2, s2) in zip(batched, single))
    print(f"device {model.device}, torch threads {torch.get_num_threads()}, {len(stims)} stimuli, {n_tok} tokens "
          f"(mean {n_tok / len(stims):.0f}/stimulus), intervening key {a.intervening}")
    print(f"one at a time : {t_single:7.2f} s  {len(stims) / t_single:6.2f} stimuli/s")
    print(f"batched ({a.batch_size:>2})  : {t_batched:7.2f} s  {len(stims) / t_batched:6.2f} stimuli/s")
    print(f"speed-up batched / one-at-a-time: {t_single / t_batched:.2f}x   max |word surprisal difference| {diff:.2e} nats")
    if a.json:
        import json, pathlib
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps({"n_stimuli": len(stims), "tokens": n_tok, "single_s": t_single,
                                                   "batched_s": t_batched, "ratio": t_single / t_batched,
                                                   "max_word_surprisal_diff": float(diff)}, indent=1))


if __name__ == "__main__":
    main()
