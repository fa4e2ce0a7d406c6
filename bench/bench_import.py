"""Import time: ``import treadle`` vs ``import torch`` in fresh interpreters, side by side.

Target: treadle adds at most 0.15 s to torch's own import.

    python bench/bench_import.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def time_import(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    statements = {
        "python": "pass",
        "torch": "import torch",
        "treadle": "import treadle",
        "lightning.fabric": "import lightning.fabric",
    }
    try:
        import importlib.util

        has_lightning = importlib.util.find_spec("lightning") is not None
    except ImportError:
        has_lightning = False
    if not has_lightning:
        statements.pop("lightning.fabric")
    times: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(args.repeat):  # interleaved so that disk caches and load affect all alike
        for name, statement in statements.items():
            times[name].append(time_import(statement))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"median of {args.repeat} fresh interpreters each")
    print(f"{'import':<18}{'seconds':>9}{'over torch':>12}")
    for name, value in medians.items():
        extra = f"{value - medians['torch']:>+11.3f}s" if name not in ("python", "torch") else ""
        print(f"{name:<18}{value:>9.3f}{extra:>12}")


if __name__ == "__main__":
    main()
