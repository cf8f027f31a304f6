"""Training progress on stderr, shared by the trainers (:mod:`hsoftmax.word2vec`,
:mod:`hsoftmax.supervised`): a tqdm bar with the learning rate, one line per epoch, or nothing.

>>> bar = ProgressBar(100, "log", desc="demo", unit="w", per="prediction", count="words")
>>> bar.epoch_line({"epoch": 1, "loss": 0.5, "words": 2000, "seconds": 2.0})
'epoch 1: loss 0.5000 per prediction, 1,000 words/s'
>>> bar.close()
"""

from __future__ import annotations

import sys

__all__ = ["ProgressBar"]


class ProgressBar:
    """Progress over all epochs' units on stderr: a tqdm bar with the learning rate
    (``enabled=True``), one line per epoch (``"log"``, for logs and pipes), or nothing (``False``).

    Args:
        total: units (words, tokens) over all epochs; ``initial``: those already done (a resumed run).
        desc, unit: the bar's label and unit (``"w"``, ``"tok"``).
        per: what the epoch's loss is averaged over (``"prediction"``, ``"example"``).
        count: the key of the epoch's stats counted in the rate, and its name (``"words"``).
    """

    def __init__(
        self, total: int, enabled: bool | str, *, desc: str, unit: str, per: str, count: str, initial: int = 0
    ) -> None:
        self.bar = None
        self.log = enabled == "log"
        self.per = per
        self.count = count
        if enabled is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit=unit,
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
                desc=desc,
                file=sys.stderr,
            )

    def update_to(self, done: int, lr: float) -> None:
        """Called from the main thread only (tqdm is not thread-safe)."""
        if self.bar is not None and done > self.bar.n:
            self.bar.set_postfix_str(f"lr={lr:.5f}", refresh=False)
            self.bar.update(done - self.bar.n)

    def epoch_line(self, stats: dict[str, float]) -> str:
        return (
            f"epoch {stats['epoch']}: loss {stats['loss']:.4f} per {self.per}, "
            f"{stats[self.count] / max(stats['seconds'], 1e-9):,.0f} {self.count}/s"
        )

    def epoch_done(self, stats: dict[str, float]) -> None:
        line = self.epoch_line(stats)
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.log:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
