#!/usr/bin/env python3
"""Parses docs/SCALING.md's Slurm array script and Kubernetes indexed-job manifest and checks that they run:
the script's syntax (bash -n), its array size, the manifest's fields, `--shard-count` against `completions`, and each
command's `mmdit run ... --check` under the variables the scheduler sets, for every task: together the shards
cover the job file's runs exactly once.

    python3 scripts/check_scaling_docs.py MMDIT
"""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def blocks(text, lang):
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


def check(mmdit, argv, env):
    """Runs the mmdit command with --check under env; returns this shard's run count."""
    assert argv[0] == "mmdit" and argv[1] == "run", argv
    r = subprocess.run([mmdit] + argv[1:] + ["--check"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **env})
    assert r.returncode == 0, (argv, env, r.stderr)
    m = re.search(r"(\d+) runs?, valid \(shard (\d+) of (\d+): (\d+) runs\)", r.stdout)
    assert m, r.stdout
    return int(m.group(1)), int(m.group(4))


def main():
    mmdit = sys.argv[1]
    doc = (ROOT / "docs" / "SCALING.md").read_text()
    # The Slurm script.
    [script] = [b for b in blocks(doc, "bash") if "#SBATCH" in b]
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    lo, hi = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", script).groups())
    command = " ".join(l.rstrip("\\").strip() for l in script.splitlines()
                       if l.strip() and not l.startswith("#") and not l.startswith("mkdir"))
    argv = shlex.split(command.replace("${SLURM_ARRAY_TASK_ID}", "0"))
    assert "--shard" in argv and argv[argv.index("--shard") + 1] == "auto", argv
    n = hi - lo + 1
    counts = [check(mmdit, argv, {"SLURM_ARRAY_TASK_ID": str(lo + k), "SLURM_ARRAY_TASK_MIN": str(lo),
                                  "SLURM_ARRAY_TASK_COUNT": str(n)}) for k in range(n)]
    assert sum(c for _, c in counts) == counts[0][0], counts
    print(f"slurm: array of {n}, {counts[0][0]} runs covered once")
    # The Kubernetes manifest.
    [manifest] = [yaml.safe_load(b) for b in blocks(doc, "yaml")]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed"
    completions = spec["completions"]
    [container] = spec["template"]["spec"]["containers"]
    argv = [a.replace("$(JOB_COMPLETION_INDEX)", "0").replace("/jobs/", "configs/") for a in container["command"]]
    assert argv[argv.index("--shard") + 1] == "auto"
    assert int(argv[argv.index("--shard-count") + 1]) == completions, "--shard-count must equal completions"
    counts = [check(mmdit, argv, {"JOB_COMPLETION_INDEX": str(k)}) for k in range(completions)]
    assert sum(c for _, c in counts) == counts[0][0], counts
    print(f"kubernetes: {completions} completions, {counts[0][0]} runs covered once")


if __name__ == "__main__":
    main()
