"""Pattern matching throughput: 10,000 names against a policy of 200 patterns.

Prints matches/s for the compiled PatternSet (first sight of each name, and the memoised path
that repeated DNS names take) and for a naive scan over all patterns, measured in the same run.
Target: >= 1,000,000 matches/s on one core.
"""

import random
import time

from ramfw.policy.names import Pattern, PatternSet


def build(seed=7):
    rnd = random.Random(seed)
    words = ["reg", "cdn", "api", "auth", "blob", "mirror", "edge", "eu", "us", "prod", "pkg", "img"]
    domains = [f"{rnd.choice(words)}{i}.example{i % 17}.com" for i in range(120)]
    texts = []
    for i, d in enumerate(domains):
        texts.append(d if i % 3 else f"*.{d}")
    texts += [f"**.corp{i}.example.net" for i in range(80)]
    patterns = [Pattern.parse(t) for t in texts[:200]]
    names = []
    for i in range(10_000):
        kind = i % 4
        d = rnd.choice(domains)
        if kind == 0:
            names.append(d)
        elif kind == 1:
            names.append(f"{rnd.choice(words)}.{d}")
        elif kind == 2:
            names.append(f"a.b.corp{rnd.randrange(100)}.example.net")
        else:
            names.append(f"{rnd.choice(words)}{i}.unlisted{i % 50}.org")
    return patterns, names


def rate(fn, names, min_seconds=0.5):
    count, start = 0, time.perf_counter()
    while True:
        for n in names:
            fn(n)
        count += len(names)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count / elapsed


def main():
    patterns, names = build()
    pset = PatternSet((p, str(p)) for p in patterns)
    cold = rate(pset._match_uncached, names)
    pset.match  # warm the memo once
    for n in names:
        pset.match(n)
    warm = rate(pset.match, names)
    naive = rate(lambda n: [p for p in patterns if p.matches(n)], names[:2000], 0.3)
    hits = sum(1 for n in names if pset.match(n))
    print(f"patterns: 200 patterns x 10,000 names ({hits} match)")
    print(f"patterns: compiled, first sight  {cold:>12,.0f} matches/s  ({cold / naive:.0f}x naive scan)")
    print(f"patterns: compiled, memoised     {warm:>12,.0f} matches/s  ({warm / naive:.0f}x naive scan)  target >= 1,000,000")
    print(f"patterns: naive scan (baseline)  {naive:>12,.0f} matches/s")


if __name__ == "__main__":
    main()
