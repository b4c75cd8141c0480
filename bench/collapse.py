"""State collapse over a long stream: a trained collapse-study Mamba-2 (the quick preset's mitigation model, T=64,
trained and cached on first use) reads >= 1M characters of generated text in step mode (pieces, state carried, input generated
piece by piece, only per-chunk statistics and per-token loss kept), unmitigated and with each mitigation.

Prints, per mitigation: loss in the first and last buckets, final state RMS of the top heads, max |h|, and the
throughput ratio against the unmitigated stream measured in the same run.

usage: python bench/collapse.py [--tokens 1048576] [--piece 4096] [--threads 1] [--json F]
"""
import argparse, json, time

import torch

from seqlab.collapse import CollapseConfig, long_stream_stats, mitigations_for, trained_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--piece", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mitigations", nargs="*", default=["none", "forget_more", "state_norm", "state_window"])
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = CollapseConfig.quick()
    T = cfg.mitigation_train_len
    model = trained_model(cfg, T)
    mits = mitigations_for(model, cfg, T)
    stream_seed = cfg.seed + 5   # a text stream no other part of the study draws (collapse uses offsets 1-3)
    out = {}
    for name in a.mitigations:
        t0 = time.perf_counter()
        r = long_stream_stats(model, a.tokens, piece_len=a.piece, bucket=a.piece, seed=stream_seed, mitigation=mits[name])
        dt = time.perf_counter() - t0
        st = r["stats"]
        rms_end = {f"L{l}H{h}": float(s["rms"][0, -1, h]) for l, s in st.items() for h in range(s["rms"].shape[-1])}
        out[name] = {"seconds": dt, "tokens_per_s": a.tokens / dt, "loss_first": r["loss"][0][1], "loss_last": r["loss"][-1][1],
                     "loss_max_bucket": max(v for _, v in r["loss"]), "n_chunks": int(st[0]["rms"].shape[1]),
                     "max_abs_overall": max(float(s["max_abs"].max()) for s in st.values()), "rms_end": rms_end}
        print(f"{name:13s} {a.tokens} chars in {dt:6.1f}s  loss first/last/max bucket {out[name]['loss_first']:.3f} / "
              f"{out[name]['loss_last']:.3f} / {out[name]['loss_max_bucket']:.3f}  max|h| {out[name]['max_abs_overall']:.3f}  "
              f"chunks {out[name]['n_chunks']}", flush=True)
    if "none" in out:
        for name, v in out.items(): v["throughput_ratio"] = out["none"]["seconds"] / v["seconds"]
        print("throughput ratio vs none:", {k: round(v["throughput_ratio"], 3) for k, v in out.items()})
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
