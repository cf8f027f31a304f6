"""`make demo`: the main job, start to finish on a laptop-class CPU.

1. word2vec: CBOW with hierarchical softmax on the embedded public-domain corpus, with a progress
   bar, nearest neighbours and the analogy score (examples/word2vec_demo.py).
2. The HS layer as the output of a model, against a full softmax of the same model, on sklearn's
   digits and on next-word prediction (examples/classifiers.py --quick).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> None:
    print(f"\n$ python examples/{script} {' '.join(args)}".rstrip(), flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


if __name__ == "__main__":
    run("word2vec_demo.py")
    run("classifiers.py", "--quick")
