"""Compare the `metrics` of two folders of seqlab results (e.g. two `seqlab report --quick` runs) field by field.

    python scripts/compare_results.py BEFORE_DIR AFTER_DIR

Timing fields (`*seconds*`, `*throughput*`, `elapsed_s`) are skipped; every other value must be equal (NaN equals
NaN). Prints the number of differences per probe and the first few; exits 1 if any differ. Used for issue 13 to check
that the refactor left every quick-preset result bitwise unchanged."""
import json, math, sys
from pathlib import Path


def _timing(key: str) -> bool:
    return key == "elapsed_s" or "seconds" in key or "throughput" in key


def differences(a, b, path="metrics") -> list[str]:
    "Every place where two JSON values differ, as 'path: a vs b'."
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if _timing(k): continue
            if k not in a or k not in b: out.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
            else: out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b): return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b): return []
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main(before: str, after: str) -> int:
    bad = 0
    for f in sorted(Path(before).glob("*.json")):
        g = Path(after) / f.name
        if not g.exists(): print(f"{f.stem:15s} missing in {after}"); bad += 1; continue
        diff = differences(json.loads(f.read_text())["metrics"], json.loads(g.read_text())["metrics"])
        print(f"{f.stem:15s} metrics differences: {len(diff)}")
        for d in diff[:10]: print("   ", d)
        bad += bool(diff)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 3: sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
