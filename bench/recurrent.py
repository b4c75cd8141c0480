"""Recurrent-model benchmarks, as ratios measured side by side in one run.

1. Peak memory streaming a Mamba-2 with per-chunk state statistics over a short and a long input
   (default 64K and 1M tokens; goal: the long run within 1.2x of the short one). Each length runs in its own
   process; on CPU the peak is the resident set size sampled every millisecond, minus the size after a warm-up
   piece (so the ~0.5 GB of torch and TransformerLens imports do not hide the difference); on CUDA it is
   torch.cuda.max_memory_allocated. Tokens are generated piece by piece, so the input itself is never held whole;
   what does grow with length is the output: 4 bytes of loss per token plus the per-chunk statistics. The
   children run with MALLOC_MMAP_THRESHOLD_=65536 so that freed blocks go back to the system (see main()).
2. Throughput of the chunked SSD algorithm against the sequential scan on the same inputs.
3. On CUDA only: the fused Triton chunk-state kernel against its torch reference.

usage: python bench/recurrent.py [--tokens 65536 1048576] [--piece 4096] [--scan-len 2048] [--threads 1] [--json F]
"""
import argparse, json, os, resource, subprocess, sys, threading, time

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def model_for_bench(device):
    from seqlab.archs import Mamba2, Mamba2Config
    torch.manual_seed(0)
    # a toy-sized model of the kind the state-collapse study trains (S ~ 1e4-1e5 state elements)
    return Mamba2(Mamba2Config(d_vocab=64, d_model=64, n_layers=2, d_state=16, d_head=16, chunk_size=64)).to(device).eval()


def child(n_tokens: int, piece: int) -> dict:
    "Stream n_tokens through the model in one process and report its peak memory above the warmed-up baseline."
    from seqlab.core import get_device
    device = get_device()
    model = model_for_bench(device)
    g = torch.Generator().manual_seed(1)
    def pieces():
        for s in range(0, n_tokens, piece):
            yield torch.randint(0, 64, (1, min(piece, n_tokens - s)), generator=g).to(device)
    model.stream(torch.randint(0, 64, (1, piece), generator=g).to(device), piece_len=piece)   # warm-up: allocator, caches
    peak, stop = [rss_bytes()], threading.Event()
    def sample():
        while not stop.is_set(): peak[0] = max(peak[0], rss_bytes()); time.sleep(0.001)
    if device.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else: base = rss_bytes()
    th = threading.Thread(target=sample, daemon=True); th.start()
    t0 = time.perf_counter()
    out = model.stream(pieces(), top_k=4)
    if device.type == "cuda": torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    stop.set(); th.join()
    peak_bytes = torch.cuda.max_memory_allocated() if device.type == "cuda" else max(peak[0], rss_bytes())
    return {"tokens": n_tokens, "device": str(device), "peak_above_baseline_mb": (peak_bytes - base) / 2**20,
            "baseline_mb": base / 2**20, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": elapsed, "tokens_per_s": n_tokens / elapsed, "n_chunks": int(out["stats"][0]["rms"].shape[1]),
            "mean_nll": float(out["nll"].mean())}


def scan_vs_chunked(T: int, device) -> dict:
    from seqlab.ssd import ssd_chunked, ssd_scan
    g = torch.Generator().manual_seed(0)
    b, H, P, N = 1, 8, 16, 16
    X, B, C = torch.randn(b, T, H, P, generator=g), torch.randn(b, T, N, generator=g), torch.randn(b, T, N, generator=g)
    logA = -torch.rand(b, T, H, generator=g) * 0.1
    X, B, C, logA = (t.to(device) for t in (X, B, C, logA))
    def timed(fn, reps):
        fn(); best = float("inf")
        for _ in range(reps):
            if device.type == "cuda": torch.cuda.synchronize()
            t0 = time.perf_counter(); y = fn()
            if device.type == "cuda": torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best, y
    with torch.no_grad():
        t_scan, (y_scan, _) = timed(lambda: ssd_scan(X, logA, B, C), 2)
        t_chunk, (y_chunk, _, _) = timed(lambda: ssd_chunked(X, logA, B, C, 64), 5)
    return {"T": T, "scan_s": t_scan, "chunked_s": t_chunk, "speedup": t_scan / t_chunk,
            "max_abs_diff": float((y_scan - y_chunk).abs().max())}


def kernel_vs_reference(T: int) -> dict:
    from seqlab.kernels import chunk_state_pass_reference, chunk_state_pass_triton
    g = torch.Generator().manual_seed(0)
    X, logA, B = torch.randn(4, T, 8, 64, generator=g), -torch.rand(4, T, 8, generator=g) * 0.1, torch.randn(4, T, 64, generator=g)
    X, logA, B = X.cuda(), logA.cuda(), B.cuda()
    def timed(fn):
        fn(); torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(5): fn()
        torch.cuda.synchronize(); return (time.perf_counter() - t0) / 5
    ref = lambda: chunk_state_pass_reference(X, logA, B, 64)
    ker = lambda: chunk_state_pass_triton(X, logA, B, 64)
    torch.cuda.reset_peak_memory_stats(); t_ref = timed(ref); m_ref = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats(); t_ker = timed(ker); m_ker = torch.cuda.max_memory_allocated()
    return {"T": T, "speedup": t_ref / t_ker, "memory_ratio_ref_over_kernel": m_ref / m_ker}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs=2, default=[65_536, 1_048_576], metavar=("SHORT", "LONG"))
    ap.add_argument("--piece", type=int, default=4096)
    ap.add_argument("--scan-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on shared 2-core machines more threads make ratios noisy)")
    ap.add_argument("--json", help="also write the measurements to this file")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        print(json.dumps(child(a.child, a.piece))); return
    from seqlab.core import get_device
    device = get_device()
    print(f"seqlab recurrent bench on {device} ({a.threads} CPU thread(s)); each ratio compares measurements taken in this run")
    runs = []
    for n in a.tokens:
        # glibc keeps freed heap pages when long-lived blocks sit between them, so without this the resident size
        # measures the allocator's caching as much as what the program holds; mmap-served blocks are returned on free
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        p = subprocess.run([sys.executable, __file__, "--child", str(n), "--piece", str(a.piece), "--threads", str(a.threads)],
                           capture_output=True, text=True, env=env)
        if p.returncode: sys.exit(f"streaming {n} tokens failed:\n{p.stderr[-2000:]}")
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"  stream {n:>9,} tokens: peak {r['peak_above_baseline_mb']:7.1f} MB above baseline "
              f"({r['baseline_mb']:.0f} MB), {r['tokens_per_s']:,.0f} tok/s, {r['n_chunks']} chunks of stats")
    short, long_ = runs
    ratio = long_["peak_above_baseline_mb"] / max(short["peak_above_baseline_mb"], 1e-9)
    print(f"peak memory, {long_['tokens']:,} vs {short['tokens']:,} tokens: {ratio:.2f}x above baseline, "
          f"{(long_['peak_above_baseline_mb'] + long_['baseline_mb']) / (short['peak_above_baseline_mb'] + short['baseline_mb']):.2f}x total "
          f"(goal <= 1.2x; tokens {long_['tokens'] / short['tokens']:.0f}x)")
    sc = scan_vs_chunked(a.scan_len, device)
    print(f"chunked SSD vs sequential scan at {sc['T']} tokens: {sc['speedup']:.1f}x faster (max |diff| {sc['max_abs_diff']:.1e})")
    out = {"stream": runs, "stream_peak_ratio": ratio, "scan_vs_chunked": sc}
    if device.type == "cuda":
        kv = kernel_vs_reference(16_384)
        print(f"fused Triton chunk-state kernel vs torch reference: {kv['speedup']:.1f}x faster, "
              f"{kv['memory_ratio_ref_over_kernel']:.1f}x less memory")
        out["kernel_vs_reference"] = kv
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
