#!/usr/bin/env python3
"""Where a step's GPU time goes, from a Kineto trace of `mmdit bench --profile DIR` (one timed run): kernel time
split into GEMM / attention / other per step, and the largest "other" kernels. One JSON line.

    python3 scripts/bench/profile_summary.py DIR/trace-0.json --steps 10 [--label TEXT]
"""
import argparse
import collections
import json


def kind(name):
    n = name.lower()
    if any(k in n for k in ("fmha", "sdpa", "flash", "attention", "attn")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "_mm_")):
        return "gemm"
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    events = json.load(open(a.trace))["traceEvents"]
    total = collections.Counter()
    count = collections.Counter()
    other = collections.Counter()
    gemm = collections.Counter()
    gemm_n = collections.Counter()
    for e in events:
        if e.get("cat") != "kernel":
            continue
        k = kind(e["name"])
        total[k] += e["dur"]
        count[k] += 1
        if k == "other":
            other[e["name"][:90]] += e["dur"]
        if k == "gemm":
            gemm[e["name"][:70]] += e["dur"]
            gemm_n[e["name"][:70]] += 1
    per = lambda us: round(us / 1000.0 / a.steps, 2)
    print(json.dumps({"profile": a.label or a.trace, "steps": a.steps,
                      "ms_per_step": {k: per(v) for k, v in total.items()},
                      "kernels_per_step": {k: round(v / a.steps) for k, v in count.items()},
                      "top_other_ms_per_step": {n: per(v) for n, v in other.most_common(12)},
                      "top_gemm_ms_per_step": {f"{n} x{round(gemm_n[n] / a.steps)}": per(v)
                                               for n, v in gemm.most_common(8)}}))


if __name__ == "__main__":
    main()
