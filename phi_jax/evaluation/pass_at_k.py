"""The unbiased pass@k estimator of the Codex paper (Chen et al. 2021, eq. 1).

With n samples of a problem of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that
k samples drawn without replacement from the n contain a passing one. The benchmark's pass@k is
its mean over problems; it is defined only when every problem has n >= k.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 10, 100)


def estimate(n: int, c: int, k: int) -> float:
  """pass@k of one problem with `n` samples, `c` of them passing (as a stable product)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k(
  passed: Mapping[str, Sequence[bool]], ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
  """{"pass@k": mean over problems} for each k that every problem's sample count allows."""
  if not passed:
    raise ValueError("pass@k of no problems")
  fewest = min(len(v) for v in passed.values())
  return {
    f"pass@{k}": float(np.mean([estimate(len(v), sum(map(bool, v)), k) for v in passed.values()]))
    for k in ks
    if k <= fewest
  }
