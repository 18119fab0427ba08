"""``--mix source=share …``: reading and checking the shares (applied by :mod:`kmq.mixing`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from kmq.errors import ParameterError

TOLERANCE = 1e-6  # how far from 1 the shares may sum


def parse_share(text: str) -> tuple[str, float]:
    """``source=share`` (the last ``=`` splits) as (source, share)."""
    source, sep, share = text.rpartition("=")
    try:
        value = float(share)
    except ValueError:
        value = math.nan
    if not sep or not source or math.isnan(value):
        raise ParameterError(
            "mix", f"{{param}} takes SOURCE=SHARE items (e.g. alpaca=0.4), got {text!r}"
        )
    return source, value


def check_shares(mix: Mapping[str, float]) -> None:
    """Every share in (0, 1], and the shares summing to 1."""
    if not mix:
        raise ParameterError("mix", "{param} names no source; give source=share items")
    for source, share in mix.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ParameterError(
                "mix", f"{{param}}: the share of {source!r} must be in (0, 1], got {share!r}"
            )
    total = float(sum(mix.values()))
    if abs(total - 1) > TOLERANCE:
        shares = ", ".join(f"{s}={v:g}" for s, v in mix.items())
        raise ParameterError("mix", f"{{param}} shares sum to {total:g}, not 1 ({shares})")
