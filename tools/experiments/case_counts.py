#!/usr/bin/env python3
"""Counts behind the pass/fail claims of `entrovid experiment edit --identity --upload` and
`entrovid experiment enhance` result files, which `entrovid experiment summarize` (means and
intervals) does not print: cases and distinct prompts, the worst case of each check and how many
cases meet the bar.

usage: case_counts.py results.jsonl [more.jsonl ...]
"""
import json
import sys


def main(paths):
    cases = [json.loads(line) for path in paths for line in open(path) if line.strip()]
    prompts = {case.get("source_prompt") or case.get("prompt") for case in cases}
    print(f"cases: {len(cases)}, distinct prompts: {len(prompts)}")
    identity = [c for c in cases if "identity_edit_max_abs_diff" in c]
    if identity:
        worst = max(c["identity_edit_max_abs_diff"] for c in identity)
        worst_branch = max(c["identity_edit_source_branch_max_abs_diff"] for c in identity)
        both_runs = sum(1 for c in identity if {"source", "target"} <= set(c["identity_edit_runs"]))
        within = sum(1 for c in identity if c["identity_edit_max_abs_diff"] <= 2)
        print(f"target = source edits: {within}/{len(identity)} within 2/255 (largest difference {worst}/255); "
              f"source branch largest difference {worst_branch}/255; both runs recorded in {both_runs}")
    upload = [c["upload_identity_psnr"] for c in cases if "upload_identity_psnr" in c]
    if upload:
        print(f"upload round trips: {sum(1 for p in upload if p >= 25)}/{len(upload)} at PSNR >= 25 dB; "
              f"lowest {min(upload):.1f} dB, median {sorted(upload)[len(upload) // 2]:.1f} dB")
    enhanced = [(cfg["targeted_entropy"], c) for c in cases for cfg in c.get("configs", []) if "targeted_entropy" in cfg]
    if enhanced:
        raised = sum(1 for entropy, _ in enhanced if entropy["enhanced"] > entropy["baseline"])
        print(f"targeted entropy raised in {raised}/{len(enhanced)} enhanced runs")


if __name__ == "__main__":
    main(sys.argv[1:])
