"""What `fabric.call` costs next to the loop you would write by hand (and next to Lightning's).

On a Fabric instance, `fabric.call` *is* the dispatcher's bound method (`Fabric.__init__` binds it, so no
wrapper frame is added), so this benchmarks `CallbackDispatcher.call` directly and imports nothing but
`treadle.callbacks`.

Every candidate of a scenario is timed in the same run, interleaved repeat by repeat, and the minimum over
the repeats is reported: on a shared machine the minimum is the least noisy estimate of the real cost.

Run:
    PYTHONPATH=src .venv/bin/python bench/bench_call.py
    PYTHONPATH=src /tmp/lvenv/bin/python bench/bench_call.py   # a venv with `lightning` adds its column
"""

from __future__ import annotations

import argparse
import platform
import timeit
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from treadle.callbacks import CallbackDispatcher


def make_callbacks(count: int, method_source: str | None) -> list[object]:
    """`count` instances of distinct classes (as real callbacks are), each defining `method_source`."""
    callbacks = []
    for n in range(count):
        namespace: dict[str, Any] = {}
        body = method_source or "pass"
        exec(f"class Callback{n}:\n    {body}\n", namespace)
        callbacks.append(namespace[f"Callback{n}"]())
    return callbacks


@dataclass
class Scenario:
    name: str
    callbacks: list[object]
    hand_loop: str  # statement timed for the hand-written loop; `cbs` holds the implementing callbacks
    call: str  # the call's argument list, after the hook name
    hand_callbacks: list[object] | None = None  # when the hand loop visits fewer callbacks


BATCH_END = "def on_train_batch_end(self, loss, batch_idx):\n        return None"
LOSS_ONLY = "def on_train_batch_end(self, loss):\n        return None"
VAR_KEYWORD = "def on_train_batch_end(self, **kwargs):\n        return None"


def scenarios() -> list[Scenario]:
    mixed = make_callbacks(4, BATCH_END) + make_callbacks(12, None)
    return [
        *(
            Scenario(
                f"{n} callback(s), all implement",
                make_callbacks(n, BATCH_END),
                "for cb in cbs: cb.on_train_batch_end(loss=loss, batch_idx=7)",
                "loss=loss, batch_idx=7",
            )
            for n in (1, 4, 16)
        ),
        Scenario(
            "16 callbacks, 4 implement",
            mixed,
            "for cb in cbs: cb.on_train_batch_end(loss=loss, batch_idx=7)",
            "loss=loss, batch_idx=7",
            hand_callbacks=mixed[:4],
        ),
        Scenario(
            "16 callbacks, none implements",
            make_callbacks(16, None),
            "for cb in cbs: pass",
            "loss=loss, batch_idx=7",
        ),
        Scenario(
            "16 callbacks, **kwargs methods",
            make_callbacks(16, VAR_KEYWORD),
            "for cb in cbs: cb.on_train_batch_end(loss=loss, batch_idx=7)",
            "loss=loss, batch_idx=7",
        ),
        Scenario(
            "16 callbacks, take 1 of 4 keywords",
            make_callbacks(16, LOSS_ONLY),
            "for cb in cbs: cb.on_train_batch_end(loss=loss)",
            "loss=loss, batch_idx=7, trainer=None, fabric=None",
        ),
    ]


def lightning_call(callbacks: list[object]) -> Callable[..., Any] | None:
    try:
        from lightning.fabric import Fabric as LightningFabric
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fabric = LightningFabric(accelerator="cpu", devices=1, callbacks=callbacks)
    call: Callable[..., Any] = fabric.call
    return call


def measure(
    statements: dict[str, str], namespace: dict[str, Any], repeats: int, number: int
) -> dict[str, float]:
    """Seconds per execution of each statement: the minimum over `repeats`, candidates interleaved."""
    timers = {label: timeit.Timer(statement, globals=namespace) for label, statement in statements.items()}
    for timer in timers.values():
        timer.timeit(number // 10 + 1)  # warm up: plans are built, the interpreter specializes
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeats):
        for label, timer in timers.items():
            best[label] = min(best[label], timer.timeit(number) / number)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=40, help="timed repeats per candidate (default 40)")
    parser.add_argument("--number", type=int, default=2000, help="calls per repeat (default 2000)")
    options = parser.parse_args()

    rows = []
    have_lightning = False
    for scenario in scenarios():
        dispatcher = CallbackDispatcher(scenario.callbacks)
        namespace: dict[str, Any] = {
            "cbs": scenario.callbacks if scenario.hand_callbacks is None else scenario.hand_callbacks,
            "call": dispatcher.call,
            "loss": 0.25,
        }
        statements = {
            "hand": scenario.hand_loop,
            "treadle": f"call('on_train_batch_end', {scenario.call})",
        }
        lightning = lightning_call(scenario.callbacks)
        if lightning is not None:
            have_lightning = True
            namespace["lightning_call"] = lightning
            statements["lightning"] = f"lightning_call('on_train_batch_end', {scenario.call})"
        rows.append((scenario.name, measure(statements, namespace, options.repeats, options.number)))

    print(
        f"CallbackDispatcher.call vs a hand-written loop; Python {platform.python_version()}, min of "
        f"{options.repeats} interleaved repeats x {options.number} calls"
    )
    header = f"{'scenario':36} {'hand us':>8} {'treadle us':>11} {'ratio':>6}"
    if have_lightning:
        header += f" {'lightning us':>13} {'ratio':>6}"
    print(header)
    for name, best in rows:
        hand, ours = best["hand"] * 1e6, best["treadle"] * 1e6
        line = f"{name:36} {hand:8.3f} {ours:11.3f} {ours / hand:5.2f}x"
        if "lightning" in best:
            theirs = best["lightning"] * 1e6
            line += f" {theirs:13.3f} {theirs / hand:5.2f}x"
        print(line)
        if name.endswith("none implements"):
            print(f"{'':36} {hand * 1e3:6.0f} ns {ours * 1e3:9.0f} ns  (absolute: nothing is called)")


if __name__ == "__main__":
    main()
