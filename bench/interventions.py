"""Mean-ablate each of the embedded model's heads in turn on a fixed batch: the batched head sweep vs one forward per head.

Both sides use the same means (computed once through capture, not timed), the same hooks and the same metric (mean
next-token loss per input). The loop runs one forward of the batch per head (`run_stacked` with one intervention per
forward, no branching); the sweep is `head_sweep`'s path: stacked rows, branching off the clean row at each layer.
Both sides run --reps times, alternating (sweep, loop, sweep, loop, ...), so that a load change on a shared machine
hits both alike; the ratio is of the medians. Prints it (goal: >= 5x on 2 CPU cores) and the largest disagreement.
Usage: .venv/bin/python bench/interventions.py [--layers N] [--reps R] [--json PATH]
"""
import argparse, json, pathlib, statistics, time

import torch

from seqlab.capture import capture
from seqlab.interventions import Intervention, Z_HOOK, mean_loss, run_stacked
from seqlab.zoo import load

TEXTS = ["The cat sat on the mat and looked at the door.", "One, two, three, four, five, six, seven, eight.",
         "Paris is the capital of France; Rome is the capital of", "She opened the box and found a small key inside it."]


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--layers", type=int, default=None, help="first N layers only (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="round-robin repetitions of each side (default 3)")
    ap.add_argument("--json", help="also write the measurements to this file"); args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load("smollm2-135m", progress=False)
    L, H = args.layers or model.n_layers, model.arch.n_heads
    toks, mask = model.tokenize(TEXTS)
    toks, mask = toks[:, :int(mask.sum(1).min())], None                     # a fixed unpadded batch
    names = [Z_HOOK.format(layer=l) for l in range(L)]
    cap = capture(model, toks, names, progress=False)
    specs = [Intervention(n, "mean", heads=h) for n in names for h in range(H)]
    values = {s: cap[s.hook].mean((0, 1)) for s in specs}
    lists = [[]] + [[s] for s in specs]
    sweeps, loops = [], []
    for _ in range(args.reps):
        t = time.perf_counter(); swept = run_stacked(model, toks, lists, mean_loss, values, branch=True); sweeps.append(time.perf_counter() - t)
        t = time.perf_counter(); looped = run_stacked(model, toks, lists, mean_loss, values, branch=False, budget_mb=1e-6); loops.append(time.perf_counter() - t)
    t_sweep, t_loop = statistics.median(sweeps), statistics.median(loops)
    diff = (swept - looped).abs().max().item()
    print(f"mean-ablation sweep of {L * H} heads, batch {tuple(toks.shape)} ({torch.get_num_threads()} threads)")
    print(f"  batched sweep  : {t_sweep:8.1f} s  (median of {args.reps}: {', '.join(f'{x:.1f}' for x in sweeps)})")
    print(f"  one per head   : {t_loop:8.1f} s  ({len(lists)} forwards; median of {args.reps}: {', '.join(f'{x:.1f}' for x in loops)})")
    print(f"  ratio          : {t_loop / t_sweep:8.1f}x   (goal >= 5x); largest difference {diff:.2e} nats")
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps({"heads": L * H, "batch": list(toks.shape), "sweep_s": t_sweep, "loop_s": t_loop,
                                                       "sweeps_s": sweeps, "loops_s": loops,
                                                       "ratio": t_loop / t_sweep, "max_abs_diff": diff}, indent=1))


if __name__ == "__main__":
    main()
