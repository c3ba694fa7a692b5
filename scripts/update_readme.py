"""Copy the latest benchmark outputs into the repository and paste their tables into the README.

    python scripts/update_readme.py [--results results]

0. ``medkd_out/report.md`` (the main job's report) becomes ``benchmarks/results/pipeline_sample.md``.
1. For every ``RESULTS/<suite>/<preset>/results.md`` it copies ``results.md``, ``results.csv`` and the
   plots to ``benchmarks/results/<suite>_<preset>/`` (the run folders with checkpoints stay out).
2. In README.md every block ``<!-- include: PATH -->`` ... ``<!-- /include -->`` is replaced by
   the current text of PATH (relative to the repository root), so no number in the README is
   typed by hand.
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /include -->)", re.S)


def copy_results(results: Path) -> list[Path]:
    copied = []
    for md in sorted(results.glob("*/*/results.md")):
        preset, suite = md.parent.name, md.parent.parent.name
        dst = ROOT / "benchmarks" / "results" / f"{suite}_{preset}"
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.csv", "dice.png", "dice_vs_ms.png"):
            if (md.parent / name).exists():
                shutil.copy2(md.parent / name, dst / name)
        copied.append(dst)
    return copied


def copy_pipeline_report(out: Path) -> bool:
    """``medkd pipeline``'s report (from ``scripts/demo.sh``) as ``benchmarks/results/pipeline_sample.md``."""
    report = out / "report.md"
    if not report.exists():
        return False
    lines = [ln for ln in report.read_text(encoding="utf-8").splitlines() if not ln.startswith("# ")]
    text = "\n".join(ln.replace("](comparison.png)", "](docs/pipeline_comparison.png)") for ln in lines).strip()
    (ROOT / "benchmarks" / "results" / "pipeline_sample.md").write_text(text + "\n", encoding="utf-8")
    if (out / "comparison.png").exists():
        shutil.copy2(out / "comparison.png", ROOT / "docs" / "pipeline_comparison.png")
    return True


def fill_readme(readme: Path) -> int:
    text = readme.read_text(encoding="utf-8")
    count = 0

    def sub(m: re.Match) -> str:
        nonlocal count
        path = ROOT / m.group("path")
        if not path.exists():
            return m.group(0)
        count += 1
        return m.group(1) + path.read_text(encoding="utf-8").rstrip("\n") + "\n" + m.group(4)

    readme.write_text(BLOCK.sub(sub, text), encoding="utf-8")
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--pipeline-out", default=str(ROOT / "medkd_out"))
    args = ap.parse_args()
    if copy_pipeline_report(Path(args.pipeline_out)):
        print("copied the pipeline report")
    for d in copy_results(Path(args.results)):
        print(f"copied {d.relative_to(ROOT)}")
    print(f"README: {fill_readme(ROOT / 'README.md')} block(s) filled")


if __name__ == "__main__":
    main()
