"""How many seeds does the downstream benchmark need? A power estimate from the published spread.

For a seed-paired comparison (method − random, the same seed for both), the test statistic is
t = mean(d) / (sd(d) / √n) with n − 1 degrees of freedom. With a true difference δ and a per-seed
spread σ of the differences, t follows a non-central t with non-centrality δ√n / σ; the power of a
two-sided test at level α is the probability that |t| exceeds the critical value. Holm's
correction over m claims tests the smallest p-value at α / m, so the family needs that level to
be safe. Prints, for each σ (default: the spreads of the published v1 run, read off
``results/quality_v1.md``), the smallest n that detects δ with the requested power.
"""

from __future__ import annotations

import argparse

from stats import power

V1_SPREADS = {
    "mean external NLL, smallest paired sd (v1)": 0.0096,
    "mean external NLL, median paired sd (v1)": 0.0205,
    "mean external NLL, largest paired sd (v1)": 0.0258,
    "held-out NLL, median paired sd (v1)": 0.0121,
}
"""Per-seed sd of the paired differences in the v1 run (3 seeds, 25 items per suite, 128 rows)."""


def seeds_needed(delta: float, sigma: float, alpha: float, target: float, n_max: int = 200) -> int:
    """The smallest n ≥ 2 whose power reaches ``target`` (``n_max`` + 1 if none does)."""
    for n in range(2, n_max + 1):
        if power(delta, sigma, n, alpha=alpha) >= target:
            return n
    return n_max + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delta", type=float, default=0.02, help="difference to detect (nats)")
    parser.add_argument("--claims", type=int, default=10, help="family size for Holm")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--sigma", type=float, action="append", help="paired sd (nats)")
    args = parser.parse_args()
    spreads = {f"σ = {s}": s for s in args.sigma} if args.sigma else V1_SPREADS
    level = args.alpha / args.claims
    print(f"δ = {args.delta} nats, power {args.power}, α = {args.alpha} / {args.claims} claims")
    print("| spread | σ (nats) | seeds needed | power at 5 seeds | power at 10 seeds |")
    print("|---|---:|---:|---:|---:|")
    for name, sigma in spreads.items():
        n = seeds_needed(args.delta, sigma, level, args.power)
        p5, p10 = (power(args.delta, sigma, k, alpha=level) for k in (5, 10))
        print(f"| {name} | {sigma:.4f} | {n} | {p5:.2f} | {p10:.2f} |")


if __name__ == "__main__":
    main()
