"""The replay's statistics over several run folders' seeds, from per-question predictions.

Seed 0 ran in one folder (its predictions are kept in docs/cpu-protocol/predictions), seeds 1
and 2 in another, on another machine (configs/cpu-protocol.yaml says why). This joins them per
(seed, test person, field), as one run folder's report would, and prints the arms' means and
the pre-registered differences with `elusive.stats` (BCa CIs over people, seeds averaged per
person; sign-flip p; Holm over the primary family of 8), for all seeds and for each source:

    python docs/cpu-protocol/seeds.py docs/cpu-protocol/predictions runs/cpu-protocol-s12/eval/small

A source is a folder of ``TAG.jsonl`` files (as kept in docs) or of ``TAG/predictions.jsonl``
folders (a run folder's eval/ROLE); the test people are those of split.json beside the first.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from elusive.stats import holm, paired_differences, policy_means, unit_scores

ARMS = ("plain", "none", "contrast", "authors")
FIELDS = ("university", "company")
METRICS = ("cloze_em", "cloze_logprob", "f1")
PRIMARY = [("contrast", "plain"), ("contrast", "none")]
SECONDARY = [("none", "plain"), ("authors", "plain"), ("authors", "none"), ("contrast", "authors")]
TAG = re.compile(r"^(?P<arm>[a-z]+)(_a[\d.]+_b[\d.]+)?_s(?P<seed>\d+)_lr[\d.e-]+_e\d+$")


def read_source(folder: Path, test: set[str]) -> dict[str, dict[int, list[dict]]]:
    """arm -> seed -> the test people's prediction rows of every trained checkpoint in `folder`."""
    rows: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(folder.iterdir()):
        name = path.stem if path.suffix == ".jsonl" else path.name
        match = TAG.match(name)
        if not match or match["arm"] not in ARMS:
            continue
        file = path if path.is_file() else path / "predictions.jsonl"
        lines = file.read_text().splitlines()
        kept = [r for r in map(json.loads, lines) if r["source_id"] in test]
        rows.setdefault(match["arm"], {})[int(match["seed"])] = kept
    return rows


def tables(sources: list[dict[str, dict[int, list[dict]]]]) -> dict[str, dict]:
    """arm -> score table over every source's seeds (a seed given twice is refused); an arm
    no source holds is left out."""
    out = {}
    for arm in ARMS:
        by_seed: dict[int, list[dict]] = {}
        for source in sources:
            for seed, rows in source.get(arm, {}).items():
                if seed in by_seed:
                    raise SystemExit(f"{arm}: seed {seed} is in two sources")
                by_seed[seed] = rows
        if by_seed:
            out[arm] = unit_scores(by_seed, METRICS)
    return out


def pvalue(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def cell(stats: dict) -> str:
    return f"{stats['mean']:+.2f} [{stats['low']:.2f}, {stats['high']:.2f}]"


def report(label: str, by_arm: dict[str, dict]) -> None:
    seeds = sorted({seed for table in by_arm.values() for seed, _, _ in table})
    print(f"\n## {label}: seeds {seeds}\n")
    print("| arm | seeds | " + " | ".join(f"{f} {m}" for f in FIELDS for m in METRICS) + " |")
    print("|---" * (2 + len(FIELDS) * len(METRICS)) + "|")
    for arm in by_arm:
        means = policy_means(by_arm[arm], FIELDS, METRICS)
        row = [cell(means[f][m]) for f in FIELDS for m in METRICS]
        arm_seeds = ",".join(str(s) for s in sorted({seed for seed, _, _ in by_arm[arm]}))
        print(f"| {arm} | {arm_seeds} | " + " | ".join(row) + " |")
    primary = []
    for arm, base in PRIMARY:
        if not {arm, base} <= by_arm.keys():
            print(f"\n{arm} - {base}: not every arm was evaluated")
            return
        diffs = paired_differences(by_arm[arm], by_arm[base], FIELDS, METRICS[:2])
        primary += [(f"{arm} - {base}", f, m, diffs[f][m]) for f in FIELDS for m in METRICS[:2]]
    adjusted = holm([stats["p"] for *_, stats in primary])
    print("\n| difference | field | metric | mean [95% BCa CI] | p | Holm p (the 8) |")
    print("|---|---|---|---|---|---|")
    for (name, field, metric, stats), p_holm in zip(primary, adjusted, strict=True):
        ps = f"{pvalue(stats['p'])} | {pvalue(p_holm)}"
        print(f"| {name} | {field} | {metric} | {cell(stats)} | {ps} |")
    print()
    for arm, base in SECONDARY:
        if not {arm, base} <= by_arm.keys():
            print(f"- {arm} - {base}: not evaluated")
            continue
        diffs = paired_differences(by_arm[arm], by_arm[base], FIELDS, METRICS[:2])
        parts = [f"{f} {m} {cell(diffs[f][m])}" for f in FIELDS for m in METRICS[:2]]
        print(f"- {arm} - {base}: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="folders of predictions")
    args = parser.parse_args()
    split = json.loads((args.sources[0] / "split.json").read_text())
    test = set(split["test"])
    sources = [read_source(folder, test) for folder in args.sources]
    report("All sources", tables(sources))
    for folder, source in zip(args.sources, sources, strict=True):
        report(str(folder), tables([source]))


if __name__ == "__main__":
    main()
