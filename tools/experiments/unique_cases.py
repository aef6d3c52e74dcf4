#!/usr/bin/env python3
"""Prints the cases of `entrovid experiment` result files once each: a prompt draw samples with
replacement, so a draw can hold a prompt twice, and the same (prompt, seed) case then appears
twice with identical results. The first occurrence is kept; what was dropped goes to stderr.

usage: unique_cases.py results.jsonl [more.jsonl ...] > unique.jsonl
"""
import json
import sys


def main(paths):
    seen = set()
    for path in paths:
        for line in open(path):
            if not line.strip():
                continue
            case = json.loads(line)
            key = (case.get("source_prompt") or case.get("prompt"), case["seed"])
            if key in seen:
                print(f"dropped a repeated case: {key[0]!r}, seed {key[1]}", file=sys.stderr)
                continue
            seen.add(key)
            sys.stdout.write(line if line.endswith("\n") else line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
