"""Print the one table of bench/gpu.sh: every result row the benchmarks appended, and each part's outcome.

Rows are JSON objects, one a line (bench/sidebyside.py's `Rows`, bench_step.py --rows, gpu.sh's status
lines). A row compares a loop with its baseline timed in the same rounds of the same process; `ratio` is
the median over rounds of the paired steps/s ratio, `best` the ratio of the fastest chunks. `ok` says
whether the paired ratio meets the target and peak memory is within 1% of the baseline's. Needs no torch.

    python bench/gpu_table.py rows.jsonl
"""

from __future__ import annotations

import json
import sys
from typing import Any

MEMORY_TOLERANCE = 0.01


def number(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "tokens/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def verdict(row: dict[str, Any]) -> str:
    checks = []
    if row.get("target") is not None:
        checks.append(row["ratio"] >= row["target"])
    raw_mib, mib = row.get("peak_raw_mib"), row.get("peak_mib")
    if raw_mib and mib is not None and row.get("target") is not None:
        checks.append(mib <= raw_mib * (1 + MEMORY_TOLERANCE))
    if not checks:
        return ""
    return "yes" if all(checks) else "NO"


def render(rows: list[dict[str, Any]]) -> list[str]:
    results = [row for row in rows if "status" not in row]
    statuses = [row for row in rows if "status" in row]
    header = (
        f"{'part':<42}{'loop':<28}{'vs':<21}{'raw':>11}{'treadle':>11} {'unit':<9}"
        f"{'ratio [quartiles]':>23}{'best':>7}{'target':>7}{'ok':>4}"
        f"{'peak MiB raw/ours':>20}{'mem':>8}{'MFU raw/ours':>14}  card; notes"
    )
    lines = [header, "-" * len(header)]
    for row in results:
        if "error" in row:
            lines.append(
                f"{row['part']:<42}{row['loop']:<28}FAILED: {row['error']}  [{row.get('card', '?')}]"
            )
            continue
        unit = row.get("unit", "steps/s")
        ratio = f"{row['ratio']:.3f}x [{row['ratio_low']:.3f}-{row['ratio_high']:.3f}]"
        target = f"{row['target']:.2f}" if row.get("target") is not None else "-"
        raw_mib, mib = row.get("peak_raw_mib"), row.get("peak_mib")
        memory = f"{number(raw_mib)}/{number(mib)}" if mib is not None else "-"
        memory_ratio = f"{(mib / raw_mib - 1) * 100:+.1f}%" if raw_mib and mib is not None else "-"
        mfu = (
            f"{row['mfu_raw']:.1%}/{row['mfu']:.1%}"
            if row.get("mfu") is not None and row.get("mfu_raw") is not None
            else "-"
        )
        notes = f"{row.get('card', '?')}" + (f"; {row['note']}" if row.get("note") else "")
        lines.append(
            f"{row['part']:<42}{row['loop']:<28}{row.get('baseline', ''):<21}{number(row['raw'], unit):>11}"
            f"{number(row['value'], unit):>11} {unit:<9}{ratio:>23}{row['best_ratio']:>6.3f}x{target:>7}"
            f"{verdict(row):>4}{memory:>20}{memory_ratio:>8}{mfu:>14}  {notes}"
        )
    if statuses:
        lines.append("")
        lines.append("parts: " + "; ".join(f"{row['part']} {row['status']}" for row in statuses))
    return lines


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    rows = []
    with open(sys.argv[1], encoding="utf-8") as file:
        for line in file:
            if line.strip():
                rows.append(json.loads(line))
    print("\n".join(render(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
