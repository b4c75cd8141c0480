"""Compare the `metrics` of two folders of seqlab results (e.g. two `seqlab report --quick` runs) field by field.

    python scripts/compare_results.py BEFORE_DIR AFTER_DIR [RTOL]

Uses `seqlab.references.differences` (timing fields skipped; NaN equals NaN; numbers equal within RTOL, default 0:
exact). Prints the number of differences per probe and the first few; exits 1 if any differ. Used for issue 13 to
check that the refactor left every quick-preset result bitwise unchanged."""
import json, sys
from pathlib import Path

from seqlab.references import differences


def main(before: str, after: str, rtol: str = "0") -> int:
    bad = 0
    for f in sorted(Path(before).glob("*.json")):
        g = Path(after) / f.name
        if not g.exists(): print(f"{f.stem:15s} missing in {after}"); bad += 1; continue
        diff = differences(json.loads(f.read_text())["metrics"], json.loads(g.read_text())["metrics"], rtol=float(rtol))
        print(f"{f.stem:15s} metrics differences: {len(diff)}")
        for d in diff[:10]: print("   ", d)
        bad += bool(diff)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4): sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
