#!/usr/bin/env python3
"""Leaf-symbol breakdown of the samples of one thread kind whose stack contains a pattern."""
import sys, re, collections
path, comm_re, pat = sys.argv[1], re.compile(sys.argv[2]), re.compile(sys.argv[3])
depth = int(sys.argv[4]) if len(sys.argv) > 4 else 1
samples, cur = [], None
for line in open(path):
    if not line.strip():
        if cur: samples.append(cur); cur = None
        continue
    if not line.startswith(("\t", " ")):
        cur = [line.split()[0], []]
    else:
        p = line.strip().split(None, 1); cur[1].append(p[1] if len(p) > 1 else "?")
if cur: samples.append(cur)
tot = len(samples)
c = collections.Counter(); n = 0
for comm, fr in samples:
    if comm_re.search(comm) and any(pat.search(f) for f in fr):
        n += 1; c[" <- ".join(fr[:depth])] += 1
print(f"{n} of {tot} samples ({100*n/tot:.1f}%)")
for k, v in c.most_common(25): print(f"  {100*v/tot:5.1f}%  {k}")
