"""Capture cost on the embedded model, as ratios to plain Hugging Face (SDPA) measured in the same run.

    python bench/capture.py [--reps 3] [--shapes 8x256,1x2048] [--no-load] [--json PATH]

Every measurement runs `--reps` times, interleaved with the others (so machine noise hits all of them alike);
the median is reported. Peak memory is the largest resident-set growth seen by a 2 ms sampler during the call
(on CUDA: torch's peak allocation). Prints one line per measurement with its ratio, e.g. `1.03x`.
"""
import argparse, json, os, shutil, statistics, sys, tempfile, threading, time
from pathlib import Path

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    "Largest growth of resident memory (CPU) or of torch's allocation (CUDA) while the block runs."
    def __init__(self, device): self.device, self.peak = device, 0
    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); self.base = torch.cuda.memory_allocated()
            return self
        self.base, self.stop = rss_bytes(), False
        def sample():
            while not self.stop: self.peak = max(self.peak, rss_bytes() - self.base); time.sleep(0.002)
        self.thread = threading.Thread(target=sample, daemon=True); self.thread.start()
        return self
    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(); self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop = True; self.thread.join(); self.peak = max(self.peak, rss_bytes() - self.base)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes", default="8x256,1x2048")
    ap.add_argument("--no-load", action="store_true", help="skip timing the first (dequantising) and cached loads")
    ap.add_argument("--everything-max-gb", type=float, default=6.0,
                    help="skip the bridge's cache-everything run where it would hold more than this")
    ap.add_argument("--json", default="bench-results/capture.json", help="where to write the measurements")
    args = ap.parse_args()

    from seqlab import zoo
    from seqlab.capture import capture
    results = {"device": None, "loads": {}, "shapes": {}}
    if not args.no_load:
        home = Path(tempfile.mkdtemp(prefix="seqlab-bench-home-"))
        old = os.environ.get("SEQLAB_HOME"); os.environ["SEQLAB_HOME"] = str(home)
        try:
            t = time.perf_counter(); zoo.load("smollm2-135m", progress=False); first = time.perf_counter() - t
            t = time.perf_counter(); zoo.load("smollm2-135m", progress=False); second = time.perf_counter() - t
        finally:
            shutil.rmtree(home, ignore_errors=True)
            if old is None: os.environ.pop("SEQLAB_HOME", None)
            else: os.environ["SEQLAB_HOME"] = old
        results["loads"] = {"first_load_s": first, "cached_load_s": second}
        print(f"load smollm2-135m: first (dequantise + cache) {first:.1f} s, cached {second:.1f} s ({first / second:.1f}x)")

    m = zoo.load("smollm2-135m", progress=False)
    dev = m.device; results["device"] = str(dev)
    L = m.arch.n_layers
    resid = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    patterns = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    for shape in args.shapes.split(","):
        b, n = map(int, shape.split("x"))
        g = torch.Generator().manual_seed(0)
        toks = torch.randint(100, m.arch.d_vocab, (b, n), generator=g).to(dev)
        pattern_gb = L * m.arch.n_heads * b * n * n * 4 / 2**30
        everything_gb = 2.2 * pattern_gb  # patterns and scores dominate the full cache
        runs = {
            "plain HF (SDPA)": lambda: m.forward_tokens(toks),
            "bridge forward": lambda: m.forward_tokens(toks, hooked=True),
            "bridge run_with_cache(resid_post)": lambda: m.hooked.run_with_cache(toks, names_filter=lambda x: x in resid),
            "seqlab capture(resid_post, every layer)": lambda: capture(m, toks, resid, batch_size=b, progress=False),
            "bridge run_with_cache(patterns)": lambda: m.hooked.run_with_cache(toks, names_filter=lambda x: x in patterns),
            "seqlab capture(patterns, every layer)": lambda: capture(m, toks, patterns, batch_size=b, budget_mb=2**20, progress=False),
        }
        if everything_gb <= args.everything_max_gb:
            runs["bridge run_with_cache(everything)"] = lambda: m.hooked.run_with_cache(toks)
        else:
            print(f"[{shape}] bridge run_with_cache(everything): skipped, would hold about {everything_gb:.0f} GB "
                  f"(raise --everything-max-gb to run it)")
        times = {k: [] for k in runs}; peaks = {k: 0 for k in runs}
        with torch.no_grad():
            runs["plain HF (SDPA)"]()  # warm-up
            for _ in range(args.reps):
                for k, fn in runs.items():
                    with PeakMemory(dev) as pm:
                        t = time.perf_counter(); out = fn()
                        if dev.type == "cuda": torch.cuda.synchronize()
                        times[k].append(time.perf_counter() - t)
                    del out
                    peaks[k] = max(peaks[k], pm.peak)
        base = statistics.median(times["plain HF (SDPA)"])
        rec = {}
        for k in runs:
            med = statistics.median(times[k])
            rec[k] = {"median_s": med, "ratio": med / base, "peak_mb": peaks[k] / 2**20}
            print(f"[{shape}] {k:<42} {med:7.3f} s  {med / base:5.2f}x  peak +{peaks[k] / 2**20:,.0f} MB")
        results["shapes"][shape] = rec
    out = Path(args.json); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
