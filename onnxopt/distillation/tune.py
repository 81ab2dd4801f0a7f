"""Pick the temperature T and the weight alpha of the Hinton loss on the validation split.

Whether distillation helps a given student depends mostly on T and alpha (the loss is
alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE, see
onnxopt.distillation.core). The search is a small seeded grid: every (T, alpha) of
TuneConfig.temperatures x TuneConfig.alphas trains a fresh copy of the same initial student
(same seed, same shuffling) for a short fixed budget of proxy epochs (the final run's peak
learning rate with a cosine decay, so each proxy run ends annealed), and is scored on the
validation split: accuracy, lower cross-entropy breaking ties. The best setting is then trained to convergence by the caller.
The test split, when there is one, plays no part.

Time: `plan` estimates the cost from the seconds per epoch of a run already made (the
labels-only baseline); tuning is skipped when it would not fit the budget, and settings that
would not end within it are reported as skipped, never silently dropped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from onnxopt.core.errors import InvalidInputError
from onnxopt.distillation.core import DistillConfig, DistillHistory

log = logging.getLogger(__name__)

TEMPERATURES = (1.0, 2.0, 4.0)
ALPHAS = (0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class TuneConfig:
    """The (T, alpha) grid, the length of a proxy run and the time budget of a distillation."""

    enabled: bool = True
    temperatures: tuple[float, ...] = TEMPERATURES
    alphas: tuple[float, ...] = ALPHAS
    proxy_epochs: int | None = None  # None: a third of the baseline's epochs, within [8, 40]
    budget_minutes: float = 10.0  # for all training of one distillation: baseline, proxies, final run

    def __post_init__(self) -> None:
        if not self.temperatures or any(not (t > 0 and math.isfinite(t)) for t in self.temperatures):
            raise InvalidInputError(f"tuning temperatures must be > 0; got {self.temperatures}")
        if not self.alphas or any(not 0 < a <= 1 for a in self.alphas):
            raise InvalidInputError(f"tuning alphas must be in (0, 1]; got {self.alphas}")
        if self.proxy_epochs is not None and self.proxy_epochs < 1:
            raise InvalidInputError(f"proxy epochs must be >= 1; got {self.proxy_epochs}")
        if not self.budget_minutes > 0:
            raise InvalidInputError(
                f"budget must be > 0 minutes; got {self.budget_minutes}: use e.g. --budget-minutes 10"
            )

    @property
    def grid(self) -> list[tuple[float, float]]:
        """Every (temperature, alpha) to try, in a fixed order."""
        return [(float(t), float(a)) for t in self.temperatures for a in self.alphas]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["temperatures"], d["alphas"] = list(self.temperatures), list(self.alphas)
        return d


@dataclass(frozen=True)
class Trial:
    """One tried (T, alpha): its proxy run's validation score, or why it was not run."""

    temperature: float
    alpha: float
    val_accuracy: float | None  # percent; None when skipped
    val_loss: float | None
    epochs: int
    seconds: float
    status: str = "ok"  # "ok" | "skipped: ..."

    @property
    def key(self) -> tuple[float, float]:
        """The score to maximise: accuracy, then lower validation loss."""
        if self.val_accuracy is None:
            return (-math.inf, -math.inf)
        loss = self.val_loss if self.val_loss is not None and math.isfinite(self.val_loss) else math.inf
        return (round(self.val_accuracy, 6), -loss)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)


@dataclass(frozen=True)
class TuneResult:
    """Every tried setting and the chosen one (None when tuning was skipped or nothing ran)."""

    trials: tuple[Trial, ...]
    best: tuple[float, float] | None
    proxy_epochs: int
    skipped: str | None = None  # why tuning did not run at all

    @property
    def ran(self) -> list[Trial]:
        """The trials that ran."""
        return [t for t in self.trials if t.status == "ok"]

    def describe(self) -> str:
        """One line for people: what was tried and what was chosen."""
        if self.skipped:
            return f"tuning skipped: {self.skipped}"
        ran = self.ran
        left = len(self.trials) - len(ran)
        tail = f"; {left} skipped (budget)" if left else ""
        if self.best is None:
            return f"tuning ran no setting{tail}"
        best = max(ran, key=lambda t: t.key)
        return (
            f"tuned T {self.best[0]:g}, alpha {self.best[1]:g} ({best.val_accuracy:.2f}% on validation) "
            f"over {len(ran)} settings x {self.proxy_epochs} proxy epochs{tail}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "trials": [t.to_dict() for t in self.trials],
            "best": list(self.best) if self.best else None,
            "proxy_epochs": self.proxy_epochs,
            "skipped": self.skipped,
        }


def proxy_epochs_for(tune: TuneConfig, reference_epochs: int | None, config: DistillConfig) -> int:
    """Length of a proxy run: tune.proxy_epochs, else a third of the reference run, in [8, 40].

    A fixed budget (config.epochs) caps it.
    """
    if tune.proxy_epochs is not None:
        n = tune.proxy_epochs
    else:
        n = min(40, max(8, round((reference_epochs or 24) / 3)))
    return min(n, config.epochs) if config.epochs is not None else n


def plan(
    tune: TuneConfig,
    *,
    seconds_per_epoch: float,
    proxy_epochs: int,
    final_epochs: int,
    elapsed: float,
) -> str | None:
    """None when the grid plus a final run of final_epochs fits the budget, else why not."""
    n = len(tune.grid)
    need = seconds_per_epoch * (n * proxy_epochs + final_epochs)
    left = tune.budget_minutes * 60 - elapsed
    if need <= left:
        return None
    return (
        f"{n} settings x {proxy_epochs} proxy epochs + a final run need ~{need / 60:.1f} min, "
        f"{max(left, 0) / 60:.1f} min of the {tune.budget_minutes:g}-minute budget are left: "
        "raise --budget-minutes or give --temperature/--alpha"
    )


RunFn = Callable[[DistillConfig], DistillHistory]


def tune_settings(
    run: RunFn,
    config: DistillConfig,
    tune: TuneConfig,
    *,
    proxy_epochs: int,
    seconds_per_epoch: float | None = None,
    final_epochs: int = 0,
    started: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Try every (T, alpha) of the grid with a proxy run; the best by validation score.

    run(config) trains a fresh copy of the initial student with config and returns its
    history (the caller makes the copy, so every trial starts from the same weights).
    Proxy runs use a fixed budget of proxy_epochs (cosine, no early stop) and config's seed.
    Budget (when started, the clock() time the distillation began, is given): a setting
    starts only when it and a final run of final_epochs are expected to end within
    tune.budget_minutes; the others are reported as skipped. Seconds per epoch come from
    seconds_per_epoch until a proxy run has measured them. on_trial sees each finished trial.
    """
    end = None if started is None else started + tune.budget_minutes * 60
    trials: list[Trial] = []
    spent_s, spent_epochs = 0.0, 0
    for t, a in tune.grid:
        spe = spent_s / spent_epochs if spent_epochs else seconds_per_epoch
        if end is not None and spe is not None and clock() + spe * (proxy_epochs + final_epochs) > end:
            trials.append(Trial(t, a, None, None, 0, 0.0, "skipped: budget"))
            continue
        cfg = _proxy_config(config, t, a, proxy_epochs)
        start = clock()
        hist = run(cfg)
        took = clock() - start
        spent_s, spent_epochs = spent_s + took, spent_epochs + hist.epochs_run
        trials.append(Trial(t, a, hist.best_val_accuracy, hist.best_val_loss, hist.epochs_run, took))
        if on_trial is not None:
            on_trial(trials[-1])
        log.info("tune T %g alpha %g: %.2f%% (loss %.4f)", t, a, hist.best_val_accuracy, hist.best_val_loss)
    ran = [tr for tr in trials if tr.status == "ok"]
    best = max(ran, key=lambda tr: tr.key) if ran else None
    return TuneResult(tuple(trials), (best.temperature, best.alpha) if best else None, proxy_epochs)


def _proxy_config(config: DistillConfig, temperature: float, alpha: float, epochs: int) -> DistillConfig:
    from dataclasses import replace

    # the final run's peak rate (a fixed budget would otherwise default to a lower one)
    return replace(config, temperature=temperature, alpha=alpha, epochs=epochs, patience=0, lr=config.peak_lr,
                   warmup_epochs=min(config.warmup_epochs, epochs - 1))
