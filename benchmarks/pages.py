"""The suite's findings as they appear in the docs: generated from ``results/*.json``.

MEASURED.md, the choosing page (``docs/guides/choosing.md``) and the README quote the suite.
Their measured statements live in blocks between two markers, which
``python -m benchmarks.report --summary --out results`` rewrites from the json and
``tests/test_results_invariants.py`` checks; the prose around the blocks holds no measured
number.
"""

from __future__ import annotations

import pathlib

BEGIN = "<!-- generated from results/*.json (python -m benchmarks.report --summary): {name} -->"
END = "<!-- end of generated block: {name} -->"
PAGES = {
    "MEASURED.md": "suite findings",
    "docs/guides/choosing.md": "suite findings",
    "README.md": "suite in one paragraph",
}
"""Each page with a generated block of the screen's findings, and the block's name."""

CONFIRMATION_PAGE = "docs/guides/choosing.md"
CONFIRMATION_BLOCK = "confirmation"
"""The page, and the block's name, that say what the confirmation tier kept."""

LIVE = ("fixed", "method")
WORD = {"better": "better", "as good": "as good", "worse": "worse", "unclear": "unresolved"}


def _regret_text(row: dict, kind: str) -> str:
    from benchmarks.report import interval

    return interval(row, kind)


def _labels(rows: list[dict], call: str) -> list[str]:
    return [
        " = ".join([f"`{r['label']}`", *(f"`{a}`" for a in r.get("aliases", []))])
        for r in rows
        if r["call"] == call and r["kind"] == "method"
    ]


def problem_lines(results: dict[str, dict]) -> list[str]:
    """One line per problem: the tuned weights, the base weights' call, each method's call."""
    lines = []
    for name, data in results.items():
        rows = {r["label"]: r for r in data["rows"]}
        best, base = rows["best fixed"], rows["base"]
        kind = data["kind"]
        margin = f"{100 * data['margin']:.1f} %" if kind == "relative" else f"{data['margin']:.2g}"
        calls = {c: _labels(data["rows"], c) for c in ("better", "as good", "worse", "unclear")}
        lines.append(
            f"- `{name}` ({data['steps']} steps, {len(data['evaluation_seeds'])} test seeds, "
            f"margin {margin}): tuned fixed weights {best['median']:.3g} (lr {best['rate']:g}, "
            f"{best['runs_needed']} runs per seed to choose); base weights "
            f"{_regret_text(base, kind)}, {WORD[base['call']]}. Better than the tuned sum: "
            f"{', '.join(calls['better']) or 'none'}; as good: "
            f"{', '.join(calls['as good']) or 'none'}; worse: "
            f"{', '.join(calls['worse']) or 'none'}; unresolved: "
            f"{', '.join(calls['unclear']) or 'none'}."
        )
    return lines


def tallies(results: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Per live arm (base and methods): how many problems gave each call."""
    out: dict[str, dict[str, int]] = {}
    for data in results.values():
        for r in data["rows"]:
            if r["kind"] in LIVE and r["label"] != "best fixed":
                counts = out.setdefault(
                    r["label"], dict.fromkeys(("better", "as good", "worse", "unclear", "ran"), 0)
                )
                counts[r["call"]] += 1
                counts["ran"] += 1
    return out


def arm_lines(results: dict[str, dict]) -> list[str]:
    """One line per live arm: its calls over the problems where it ran."""
    return [
        f"- `{label}`: better on {t['better']}, as good on {t['as good']}, worse on "
        f"{t['worse']}, unresolved on {t['unclear']} of {t['ran']} problems."
        for label, t in tallies(results).items()
    ]


def findings(results: dict[str, dict]) -> str:
    """The block of MEASURED.md and the choosing page."""
    return "\n".join(
        [
            "Per problem (regret against the tuned fixed weights on the same test seeds, "
            "median and 95 % interval):",
            "",
            *problem_lines(results),
            "",
            "Per arm, over the problems:",
            "",
            *arm_lines(results),
        ]
    )


def paragraph(results: dict[str, dict]) -> str:
    """The README's block: the suite in one paragraph."""
    t = tallies(results)
    methods = {k: v for k, v in t.items() if k not in ("base", "stable")}

    def line(label: str, plural: bool, counts: dict[str, int]) -> str:
        return (
            f"{label} {'are' if plural else 'is'} better on {counts['better']}, as good on "
            f"{counts['as good']} and worse on {counts['worse']} (unresolved on "
            f"{counts['unclear']}) of {counts['ran']}"
        )

    parts = [
        f"Against a weighted sum tuned on calibration seeds, on {len(results)} small problems "
        "([results/summary.md](results/summary.md), 95 % intervals over paired test seeds), "
        + line("the untuned base weights", True, t["base"])
    ]
    if "stable" in t:
        parts.append(line("the default controller `stable_weights`", False, t["stable"]))
    if methods:
        most = max(
            methods,
            key=lambda k: (methods[k]["better"] + methods[k]["as good"], methods[k]["better"]),
        )
        parts.append(line(f"the method with the most such calls, `{most}`,", False, methods[most]))
    return "; ".join(parts) + "."


def generated_blocks(results: dict[str, dict]) -> dict[str, str]:
    """Each page's generated block, from the results."""
    texts = {"suite findings": findings(results), "suite in one paragraph": paragraph(results)}
    return {path: texts[name] for path, name in PAGES.items()}


def confirmation(confirmed: dict[str, dict], screens: dict[str, dict]) -> str:
    """The choosing page's block: per confirmation problem, which screen calls it kept."""
    from benchmarks import problems, profiles

    lines = []
    for name, data in confirmed.items():
        problem = problems.ALL[name]()
        screen = screens.get(problem.screen or "", {"rows": []})
        before = {r["label"]: r["call"] for r in screen["rows"]}
        kept, changed = [], []
        for r in data["rows"]:
            if r["kind"] not in LIVE or r["label"] == "best fixed" or r["label"] not in before:
                continue
            if before[r["label"]] == r["call"]:
                kept.append(f"`{r['label']}` {WORD[r['call']]}")
            else:
                changed.append(
                    f"`{r['label']}` {WORD[before[r['label']]]} -> {WORD[r['call']]} "
                    f"({_regret_text(r, data['kind'])})"
                )
        not_run = list(profiles.CONFIRMATION_NOT_RUN.get(name, {}))
        lines.append(
            f"- `{name}` ({problems.parameter_count(problem):,} parameters, screen "
            f"`{problem.screen}`, {len(data['evaluation_seeds'])} test seeds): kept: "
            f"{', '.join(kept) or 'none'}; changed: {', '.join(changed) or 'none'}"
            + (f"; not run: {', '.join(f'`{k}`' for k in not_run)}" if not_run else "")
            + "."
        )
    return "\n".join(lines)


def _markers(path: str, name: str | None = None) -> tuple[str, str]:
    name = PAGES[path] if name is None else name
    return BEGIN.format(name=name), END.format(name=name)


def block(text: str, path: str, name: str | None = None) -> str:
    """The generated block ``name`` (default: the page's suite block) of ``text``, the page at
    ``path``, without its markers."""
    begin, end = _markers(path, name)
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def write_block(root: pathlib.Path, path: str, new: str, name: str | None = None) -> bool:
    """Rewrites one generated block of a page; False where the page lacks its markers."""
    file = root / path
    text = file.read_text()
    begin, end = _markers(path, name)
    if begin not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    file.write_text(f"{head}{begin}\n{new}\n{end}{tail}")
    return True


def write_pages(results: dict[str, dict], root: pathlib.Path) -> list[pathlib.Path]:
    """Rewrites each page's generated block (a page without the markers is left alone)."""
    return [
        root / path
        for path, new in generated_blocks(results).items()
        if write_block(root, path, new)
    ]
