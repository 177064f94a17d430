"""The authors' own Helmholtz code, run here: the outside check of ``papers_helmholtz``.

``python -m benchmarks.authors_helmholtz REPO --methods M2 --seeds 5 --out results`` imports
``Helmholtz/Helmholtz2D_model_tf.py`` from a checkout ``REPO`` of
github.com/PredictiveIntelligenceLab/GradientPathologiesPINNs (TensorFlow 1 code, run through
``tensorflow.compat.v1``), sets the problem up as their ``Helmholtz/Helmholtz2D.py`` does
(``a_1 = 1``, ``a_2 = 4``, ``lam = 1``, a 2-50-50-50-1 network, 40,001 iterations of batch 128),
and writes the relative L2 error of u on their 100 x 100 test grid per seed to
``papers_helmholtz_authors.json``. ``M1`` is the plain PINN, ``M2`` learning-rate annealing.

Their code sets no seed; here seed ``s`` seeds NumPy (their samplers) and TensorFlow's graph
(their Xavier initialisation) before the model is built. Nothing of their code is copied into
this repository: the checkout is read where it lies. The table's page
(``papers_helmholtz.md``) is regenerated with their seeds beside ours. Needs
``pip install '.[authors]'`` (TensorFlow's CPU build; measured with 2.21); not part of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import papers, report

(A1, A2), LAM = papers.HELMHOLTZ_WAVES, papers.HELMHOLTZ_LAM  # the table's problem
LAYERS = list(papers.HELMHOLTZ_LAYERS)


def exact(x: np.ndarray) -> np.ndarray:
    return np.sin(A1 * np.pi * x[:, 0:1]) * np.sin(A2 * np.pi * x[:, 1:2])


def forcing(x: np.ndarray) -> np.ndarray:
    return (-((A1 * np.pi) ** 2) - (A2 * np.pi) ** 2 + LAM) * exact(x)


def load_tf1(repo: pathlib.Path) -> tuple[Any, Any]:
    """TensorFlow 1's API, and the authors' model module imported against it."""
    import tensorflow  # optional: not installed for the tests

    tf = tensorflow.compat.v1
    tf.disable_v2_behavior()
    sys.modules["tensorflow"] = tf  # their module's ``import tensorflow as tf`` gets TF 1's API
    sys.path.insert(0, str(repo / "Helmholtz"))
    import Helmholtz2D_model_tf as model

    return tf, model


def run_one(tf: Any, model: Any, method: str, seed: int, iterations: int, log) -> float:
    """One training run of the authors' ``Helmholtz2D``; returns the relative L2 error of u."""

    def operator(u, x1, x2, lam, sigma_x1=1.0, sigma_x2=1.0):  # as their Helmholtz2D.py
        u_x1 = tf.gradients(u, x1)[0] / sigma_x1
        u_x2 = tf.gradients(u, x2)[0] / sigma_x2
        u_xx1 = tf.gradients(u_x1, x1)[0] / sigma_x1
        u_xx2 = tf.gradients(u_x2, x2)[0] / sigma_x2
        return u_xx1 + u_xx2 + lam * u

    tf.reset_default_graph()
    tf.set_random_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (their samplers draw from the legacy global state)
    bcs = [model.Sampler(2, np.array(edge), exact) for edge in papers.HELMHOLTZ_EDGES]
    res = model.Sampler(2, np.array([[-1.0, -1.0], [1.0, 1.0]]), forcing)
    with contextlib.redirect_stdout(log):
        net = model.Helmholtz2D(LAYERS, operator, None, bcs, res, LAM, method, False)
        net.train(nIter=iterations, batch_size=papers.BATCH)
    grid = np.linspace(-1.0, 1.0, 100)
    x1, x2 = np.meshgrid(grid, grid)
    points = np.hstack([x1.reshape(-1, 1), x2.reshape(-1, 1)])
    u, pred = exact(points), net.predict_u(points)
    net.sess.close()
    return float(np.linalg.norm(u - pred, 2) / np.linalg.norm(u, 2))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.authors_helmholtz")
    parser.add_argument("repo", type=pathlib.Path, help="a checkout of the authors' repository")
    parser.add_argument("--methods", default="M2", help="comma-separated: M1 (plain), M2")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--iterations", type=int, default=40001, help="their nIter")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/papers"))
    parser.add_argument(
        "--log",
        type=pathlib.Path,
        default=pathlib.Path("out/authors_helmholtz.log"),
        help="their code's progress lines (one every 10 iterations)",
    )
    args = parser.parse_args(argv)
    labels = {"M1": "plain", "M2": "lr_annealing"}
    methods = args.methods.split(",")
    if unknown := sorted(set(methods) - set(labels)):
        parser.error(f"--methods: unknown {', '.join(unknown)} (known: M1, M2)")
    args.out.mkdir(parents=True, exist_ok=True)
    tf, model = load_tf1(args.repo)
    command = "python -m benchmarks.authors_helmholtz " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    arms = []
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("w") as log:
        for method in methods:
            scores, start = [], time.perf_counter()
            for seed in range(args.seeds):
                scores.append(run_one(tf, model, method, seed, args.iterations, log))
                print(f"{method} seed {seed}: {scores[-1]:.4g}", file=sys.stderr, flush=True)
            arms.append(
                {
                    "label": labels[method],
                    "method": method,
                    "scores": scores,
                    "seconds": time.perf_counter() - start,
                }
            )
    data = {
        "name": "helmholtz_authors",
        "source": f"github.com/{papers.WANG_REPO} at {papers.WANG_COMMIT}: "
        "Helmholtz/Helmholtz2D_model_tf.py, run through tensorflow.compat.v1",
        "tensorflow": tf.VERSION,
        "iterations": args.iterations,
        "seeds": list(range(args.seeds)),
        "commit": report.library_commit(),
        "command": command,
        "machine": f"{platform.machine()} CPU, {platform.system()}, Python "
        f"{platform.python_version()}",
        "arms": arms,
    }
    (args.out / "papers_helmholtz_authors.json").write_text(json.dumps(data, indent=1) + "\n")
    papers.write_pages(args.out, pathlib.Path(__file__).resolve().parent.parent)
    return data


if __name__ == "__main__":
    main()
