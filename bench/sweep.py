"""A sweep of N independent small cells: on a local Ray (one task per cell) against a sequential loop in this process,
measured in the same run; plus Ray's start-up cost.

The cells are `icl-regression` shrunk by overrides to a few seconds each (it trains its own tiny models: nothing to
download), seeds 0..N-1. Each side trains from an empty SEQLAB_HOME of its own, so neither reuses the other's
checkpoints. Prints the seconds of each side, the ratio sequential / Ray (the speed-up; about the number of CPUs at
best, less the import of seqlab in each new Ray worker), the same including Ray's start-up, and Ray's start-up alone.

On the lab's machines Ray may only start inside a private network namespace that holds just loopback. This script
re-runs itself in one when it is not in one already and `unshare -n` is permitted (root):

    python bench/sweep.py [--cells 8] [--cpus 2] [--json PATH]
    # the same by hand:
    unshare -n sh -c 'ip link set lo up; python bench/sweep.py --no-netns --json bench-results/sweep.json'

Elsewhere (a laptop, a cluster node) pass --no-netns to start Ray as Ray does by default.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

# a few seconds per cell on one core (see tests/test_sweep.py, which sweeps the same cells)
TINY = {"train.steps": 30, "lsa_steps": 30, "n_eval": 64, "n_boot": 20, "lsa_batch": 128, "batch_size": 16}


def only_loopback() -> bool:
    "True inside a network namespace whose only interface is loopback."
    import socket
    return [name for _, name in socket.if_nameindex()] == ["lo"]     # the current namespace's interfaces (not /sys's)


def in_netns(argv) -> int:
    "Re-run this script with `argv` inside a fresh loopback-only network namespace; its exit status."
    cmd = "ip link set lo up; exec " + " ".join(f"'{a}'" for a in [sys.executable, __file__, "--no-netns", *argv])
    return subprocess.call(["unshare", "-n", "sh", "-c", cmd])


def timed_sweep(spec, home: Path, **kw) -> tuple[float, dict]:
    from seqlab.sweep import run_sweep
    os.environ["SEQLAB_HOME"] = str(home)     # read when a cell trains (and by Ray workers, which inherit it at start)
    out = Path(tempfile.mkdtemp(prefix="seqlab-bench-sweep-"))
    t = time.perf_counter(); r = run_sweep(spec, out, progress=False, **kw); dt = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    if r["failed"] or r["ran"] != r["cells"]: raise SystemExit(f"bench/sweep.py: the sweep did not finish cleanly: {r}")
    return dt, r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for the local Ray (default: all)")
    ap.add_argument("--no-netns", action="store_true", help="start Ray here, as it is (do not re-run in a loopback-only namespace)")
    ap.add_argument("--json", default="bench-results/sweep.json", help="where to write the measurements")
    args, argv = ap.parse_args(), sys.argv[1:]
    if not args.no_netns and not only_loopback():
        if shutil.which("unshare") and os.geteuid() == 0: return in_netns(argv)
        raise SystemExit("bench/sweep.py: not in a loopback-only network namespace and `unshare -n` needs root; "
                         "run it under `unshare -n sh -c 'ip link set lo up; ...'`, or pass --no-netns where Ray may use the network.")
    import ray
    from seqlab.sweep import start_ray
    spec = {"probes": ["icl-regression"], "seeds": list(range(args.cells)), "quick": True, "set": TINY}
    homes = Path(tempfile.mkdtemp(prefix="seqlab-bench-home-"))
    try:
        seq_s, _ = timed_sweep(spec, homes / "sequential", use_ray=False)
        os.environ["SEQLAB_HOME"] = str(homes / "ray")
        t = time.perf_counter(); start_ray(num_cpus=args.cpus); start_s = time.perf_counter() - t
        try: ray_s, _ = timed_sweep(spec, homes / "ray")
        finally: ray.shutdown()
    finally:
        shutil.rmtree(homes, ignore_errors=True)
    res = {"cells": args.cells, "cpus": args.cpus, "sequential_s": seq_s, "ray_s": ray_s, "ray_start_s": start_s,
           "speedup": seq_s / ray_s, "speedup_with_start": seq_s / (ray_s + start_s)}
    print(f"{args.cells} cells, {args.cpus} CPUs")
    print(f"  sequential, one process   {seq_s:7.1f} s")
    print(f"  Ray (local), excl. start  {ray_s:7.1f} s   {res['speedup']:.2f}x")
    print(f"  Ray (local), incl. start  {ray_s + start_s:7.1f} s   {res['speedup_with_start']:.2f}x")
    print(f"  Ray start-up              {start_s:7.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
