#!/usr/bin/env python3
"""Prints the fuzz/README.md results table from fuzz/logs/<target>.log
(libFuzzer's output of fuzz/campaign.sh) and the minimised corpora."""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def row(target):
    log = open(os.path.join(HERE, "logs", target + ".log"), errors="replace").read()
    stat = dict(re.findall(r"^stat::(\w+):\s+(\d+)", log, re.M))
    status = re.findall(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+)", log, re.M)
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    secs = done.group(2) if done else "1800 (cap)"
    cov, ft = status[-1] if status else ("?", "?")
    corpus = os.path.join(HERE, "corpora", target)
    files = os.listdir(corpus) if os.path.isdir(corpus) else []
    size = sum(os.path.getsize(os.path.join(corpus, f)) for f in files)
    arts = os.path.join(HERE, "artifacts", target)
    crashes = len(os.listdir(arts)) if os.path.isdir(arts) else 0
    execs = int(stat.get("number_of_executed_units", 0))
    return (f"| `{target}` | {execs:,} | {secs} | {int(stat.get('average_exec_per_sec', 0)):,} "
            f"| {cov} | {ft} | {len(files)} / {size // 1024} KiB | {crashes} |")


def main():
    targets = sys.argv[1:] or sorted(f[:-4] for f in os.listdir(os.path.join(HERE, "logs"))
                                     if f.endswith(".log") and not f.endswith(".merge.log"))
    print("| target | executions | seconds | exec/s | cov | ft | minimised corpus | crashes |")
    print("|---|---|---|---|---|---|---|---|")
    for t in targets:
        print(row(t))


if __name__ == "__main__":
    main()
