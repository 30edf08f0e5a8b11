"""Time the 2-D toy metrics on two samples of 8gaussians at n = 1000, 2000, 5000.

    python benchmarks/eval_toy.py
"""
import time, torch
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.metrics import wasserstein, mmd_rbf, mode_coverage, log_density
d = TOY_DISTRIBUTIONS["8gaussians"]
for n in (1000, 2000, 5000):
    a = d.sample(n, generator=torch.Generator().manual_seed(0)); b = d.sample(n, generator=torch.Generator().manual_seed(1))
    out = []
    for name, fn in (("w1", lambda: wasserstein(a, b, p=1)), ("w2", lambda: wasserstein(a, b, p=2)), ("mmd", lambda: mmd_rbf(a, b)),
                     ("modes", lambda: mode_coverage(b, d.modes, d.mode_std).covered), ("loglik", lambda: log_density(d, b).mean)):
        t = time.perf_counter(); v = fn(); out.append(f"{name}={v:.4g} ({time.perf_counter()-t:.2f} s)")
    print(f"| {n} | " + " | ".join(out) + " |")
