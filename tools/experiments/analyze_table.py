#!/usr/bin/env python3
"""Markdown table of `entrovid experiment analyze` results: one row per site group, the identity
and uniform conditions side by side (effect = 1 - SSIM to the baseline, change in temporal
consistency, change in mean normalised entropy, evaluator adherence), averaged over the cases of
the given result files. With --scores, a second table: the evaluator's per-measure means (colour,
shape, motion, ...) of the baseline and of every condition, to see which prompt words a group
carries.

usage: analyze_table.py [--scores] results.jsonl [more.jsonl ...]
"""
import json
import sys
from collections import defaultdict


# The evaluator's measures shown by --scores, in the grammar's slot order.
SCORE_MEASURES = ["colour", "shape", "motion", "speed", "size", "background", "temporal", "sharpness"]


# Every evaluator measure collected: adherence (the first table) and those of --scores.
COLLECTED_MEASURES = ["adherence"] + SCORE_MEASURES


def main(paths, with_scores):
    cells = defaultdict(lambda: defaultdict(list))
    baseline_scores = defaultdict(list)
    groups = []
    for path in paths:
        for line in open(path):
            if not line.strip():
                continue
            report = json.loads(line)["report"]
            scores = report["baseline"].get("scores") or {}
            for measure in COLLECTED_MEASURES:
                if measure in scores:
                    baseline_scores[measure].append(scores[measure])
            for condition in report["conditions"]:
                label, op = condition["label"], condition["op"]
                if label not in groups:
                    groups.append(label)
                cell = cells[(label, op)]
                cell["effect"].append(condition["effect"])
                cell["dtc"].append(condition["delta_temporal_consistency"])
                if condition.get("delta_mean_normalized_entropy") is not None:
                    cell["dh"].append(condition["delta_mean_normalized_entropy"])
                for measure in COLLECTED_MEASURES:
                    if measure in (condition.get("scores") or {}):
                        cell[measure].append(condition["scores"][measure])

    def mean(values):
        return sum(values) / len(values) if values else None

    def show(value, sign=False):
        if value is None:
            return "–"
        return f"{value:+.3f}" if sign else f"{value:.3f}"

    baseline_adherence = baseline_scores["adherence"]
    print(f"baseline adherence: {show(mean(baseline_adherence))} over {len(baseline_adherence)} case(s)\n")
    print("| site group | I effect | U effect | I ΔTC | U ΔTC | I ΔH/lnN | U ΔH/lnN | I adherence | U adherence |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in groups:
        i, u = cells.get((label, "identity"), {}), cells.get((label, "uniform"), {})
        row = [label]
        for key, sign in [("effect", False), ("dtc", True), ("dh", True), ("adherence", False)]:
            row += [show(mean(i.get(key, [])), sign), show(mean(u.get(key, [])), sign)]
        print("| " + " | ".join(row) + " |")

    if with_scores:
        print("\n| condition | " + " | ".join(SCORE_MEASURES) + " |")
        print("|---" * (len(SCORE_MEASURES) + 1) + "|")
        print("| baseline | " + " | ".join(show(mean(baseline_scores[m])) for m in SCORE_MEASURES) + " |")
        for label in groups:
            for op in ("identity", "uniform"):
                cell = cells.get((label, op))
                if cell and cell.get("adherence"):
                    values = [show(mean(cell.get(m, []))) for m in SCORE_MEASURES]
                    print(f"| {op[0].upper()} {label} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main([a for a in arguments if a != "--scores"], "--scores" in arguments)
