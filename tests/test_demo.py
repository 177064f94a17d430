"""`make demo` leaves a checkout clean: its outputs go to a folder that git ignores.

The demo trains through ``benchmarks.harness``, tested at tiny sizes in
``test_benchmark_suite.py``; here the training is replaced by a stand-in so that only the demo's
own output logic runs.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from benchmarks import demo

ROOT = pathlib.Path(__file__).parents[1]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.skipif(
    shutil.which("git") is None or git("rev-parse").returncode != 0, reason="needs a git checkout"
)
def test_default_outputs_are_ignored_and_untracked():
    for path in demo.output_paths(demo.DEFAULT_OUT):
        assert git("check-ignore", "-q", str(path)).returncode == 0, f"{path} is not ignored"
        assert git("ls-files", str(path)).stdout == "", f"{path} is tracked"


def test_demo_writes_only_its_two_files_under_out(tmp_path, monkeypatch, capsys):
    def fake_figure(results, path):
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(demo, "run", lambda seeds, steps: {})
    monkeypatch.setattr(demo, "table", lambda results: "table")
    monkeypatch.setattr(demo, "figure", fake_figure)
    monkeypatch.setattr(demo, "rescue", lambda results: "rescue")
    monkeypatch.chdir(tmp_path)
    demo.main(["--steps", "1", "--seeds", "1"])

    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(demo.output_paths(demo.DEFAULT_OUT))
    printed = capsys.readouterr().out
    for path in demo.output_paths(demo.DEFAULT_OUT):
        assert str(path) in printed  # the demo says where it wrote


def test_out_results_regenerates_the_tracked_copies():
    """``--out results`` (``make figures``) writes the files committed in ``results/``."""
    tracked = {p.name for p in (ROOT / "results").glob("demo.*")}
    assert tracked == {p.name for p in demo.output_paths(pathlib.Path("results"))}
