"""``fastvae bench``: run the benchmarks of a source checkout's ``bench/`` folder.

The benchmarks are scripts beside the package (bench/bench_latent.py,
bench/bench_likelihood.py, bench/bench_train.py, bench/bench_diffusion.py), not part of an installed wheel: they
time fastvae against eager PyTorch and torch.compile and write their results under
bench/results/.  An install without them says where to get them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

from .options import PROGRAM

BENCHMARKS = ("latent", "likelihood", "train", "diffusion")


def bench_dir() -> Optional[Path]:
    """The bench/ folder of the source checkout fastvae is imported from, if any."""
    folder = Path(__file__).resolve().parent.parent.parent / "bench"
    return folder if (folder / "common.py").is_file() else None


def load_script(name: str):
    """Import bench/bench_<name>.py by its path (bench/ is a folder of scripts)."""
    folder = bench_dir()
    if folder is None:
        raise SystemExit(
            f"{PROGRAM} bench: the benchmarks live in the bench/ folder of a source checkout, which this install "
            f"({Path(__file__).resolve().parent.parent}) does not have; clone the repository, `pip install -e .` "
            f"it, and run `{PROGRAM} bench` (or `python bench/bench_{name}.py`) there"
        )
    path = folder / f"bench_{name}.py"
    if not path.is_file():
        raise SystemExit(f"{PROGRAM} bench: no {path}")
    module_name = f"fastvae_bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def run_benchmarks(names: Sequence[str], arguments: Sequence[str]) -> int:
    """Run each benchmark's ``main(arguments)``; the exit status of the last failing one
    (0 when all pass)."""
    status = 0
    for name in names:
        print(f"== {PROGRAM} bench {name}: python bench/bench_{name}.py {' '.join(arguments)}".rstrip(), flush=True)
        code = load_script(name).main(list(arguments))
        status = code or status
    return status
