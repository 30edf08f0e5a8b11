"""Multistep exponential-integrator solvers in log-SNR time: DPM-Solver++ 2M, 2M SDE and 3M SDE
(Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its SDE variant) and UniPC (Zhao et al. 2023,
B(h) = e^h - 1).

All work in VE coordinates with lambda = -log sigma (the half log-SNR), on the data prediction
x0 = D(x, sigma). Each reuses the previous steps' x0 estimates, so N steps cost N evaluations.
The first step has no history (first order) and the last step, to sigma = 0, is x = x0.
"""

import torch

from .base import sample_loop


def _lam(sigma):
    return -torch.log(sigma)


def _multistep(step, depth):
    """Adapt ``step(x, x0, sigma, sigma_next, h, past)`` to the loop: h = lambda' - lambda, and
    ``past`` holds up to ``depth`` earlier x0 estimates, most recent first, as (x0_k, r_k) with
    r_k = h_k / h, h_k the log-SNR length of the step that left point k (point 0 is the current
    one); it is empty on the first step. The last step, to sigma = 0, ends at x0."""
    history = []  # (x0, sigma) of the points visited, most recent first

    def loop_step(x, denoised, sigma, sigma_next):
        earlier = history[:depth]
        history[:] = [(denoised, sigma), *earlier]
        if sigma_next == 0:
            return denoised
        h = _lam(sigma_next) - _lam(sigma)
        past, later = [], sigma
        for x0_k, sigma_k in earlier:
            past.append((x0_k, (_lam(later) - _lam(sigma_k)) / h))
            later = sigma_k
        return step(x, denoised, sigma, sigma_next, h, past)

    return loop_step


def sample_dpmpp_2m(denoiser, x, sigmas, *, cond=None, callback=None, progress=False):
    """DPM-Solver++(2M): x' = (s'/s) x - expm1(-h) D', with D' = (1 + 1/2r) x0 - (1/2r) x0_prev,
    r = h_prev / h."""

    def step(x, denoised, sigma, sigma_next, h, past):
        if past:
            prev, r = past[0]
            denoised = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * prev
        return (sigma_next / sigma) * x - torch.expm1(-h) * denoised

    return sample_loop(_multistep(step, 1), denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, eta=1.0, noise=None, cond=None, callback=None,
                        progress=False):
    """DPM-Solver++(2M) SDE, midpoint form (as k-diffusion and diffusers' sde-dpmsolver++):
    x' = (s'/s) e^(-eta h) x + (1 - e^(-(1+eta) h)) x0 + 1/2r (1 - e^(-(1+eta) h)) (x0 - x0_prev)
         + s' sqrt(1 - e^(-2 eta h)) z.
    eta = 0 is a deterministic 2M variant."""
    noise = noise or (lambda: torch.randn_like(x))

    def step(x, denoised, sigma, sigma_next, h, past):
        eta_h = eta * h
        decay = -torch.expm1(-h - eta_h)
        x = (sigma_next / sigma) * torch.exp(-eta_h) * x + decay * denoised
        if past:
            prev, r = past[0]
            x = x + 0.5 * decay / r * (denoised - prev)
        return _add_sde_noise(x, noise, sigma_next, eta_h)

    return sample_loop(_multistep(step, 1), denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)


def _add_sde_noise(x, noise, sigma_next, eta_h):
    """The fresh noise of a DPM-Solver++ SDE step: std s' sqrt(1 - e^(-2 eta h)), none at eta = 0."""
    if eta_h == 0:
        return x
    return x + noise() * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt()


def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, eta=1.0, k_diffusion=False, noise=None, cond=None,
                        callback=None, progress=False):
    """DPM-Solver++(3M) SDE: the third-order multistep exponential integrator of the SDE whose
    drift is scaled by eta (eta = 1: the reverse SDE, SDE-DPM-Solver++; eta = 0: the probability-flow
    ODE, i.e. DPM-Solver++(3M)). In half log-SNR lambda = -log sigma, with H = (1 + eta) h,

        x' = e^(-H) x + int_0^h (1 + eta) e^(-(1 + eta)(h - tau)) x0(lambda + tau) dtau
             + s' sqrt(1 - e^(-2 eta h)) z,

    and x0(lambda + tau) ~ x0 + (tau / h) D1 + (tau / h)^2 D2 with D1 = h x0', D2 = h^2 x0'' / 2
    from backward differences of the last three estimates (r_k = h_k / h):

        D1 = d0 + r0 / (r0 + r1) (d0 - d1),  D2 = (d0 - d1) / (r0 + r1),
        d0 = (x0 - x0_1) / r0,  d1 = (x0_1 - x0_2) / r1,

    so x' = e^(-H) x + w0 x0 + w1 D1 + w2 D2 + noise with the exact weights w0 = 1 - e^(-H),
    w1 = 1 - w0 / H, w2 = 1 - 2 / H + 2 w0 / H^2. The first steps ramp up (first, then second
    order) and the last, to sigma = 0, returns x0. ``noise()`` draws z (a SeededNoise for
    per-sample seeds), as in ``sample_dpmpp_2m_sde``.

    ``k_diffusion=True`` uses k-diffusion's sample_dpmpp_3m_sde weight on D2 (shared by the
    DPM-Solver reference code and diffusers' deterministic order 3): -phi_3 = w2 / 2, half the
    Taylor weight, which leaves its ODE limit second order (measured: tests/test_sde_samplers.py);
    use it to reproduce those samplers' outputs.
    """
    noise = noise or (lambda: torch.randn_like(x))

    def step(x, denoised, sigma, sigma_next, h, past):
        eta_h, big_h = eta * h, (1 + eta) * h
        w0 = -torch.expm1(-big_h)
        x = torch.exp(-big_h) * x + w0 * denoised
        w1 = 1 - w0 / big_h
        if len(past) == 1:
            (x0_1, r0), = past
            x = x + w1 * (denoised - x0_1) / r0
        elif len(past) == 2:
            (x0_1, r0), (x0_2, r1) = past
            d0, d1 = (denoised - x0_1) / r0, (x0_1 - x0_2) / r1
            w2 = 1 - 2 / big_h + 2 * w0 / big_h**2
            x = x + w1 * (d0 + r0 / (r0 + r1) * (d0 - d1)) + (w2 / 2 if k_diffusion else w2) * (d0 - d1) / (r0 + r1)
        return _add_sde_noise(x, noise, sigma_next, eta_h)

    return sample_loop(_multistep(step, 2), denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)


def _unipc_coefficients(h, rks, order):
    """UniPC's shared algebra for a step of log-SNR length h with previous-point ratios ``rks``:
    h phi_1 = expm1(-h), B(h) = expm1(-h), the order conditions R rho = b (Zhao et al. Eq. 8)."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = torch.expm1(hh)
    rks = torch.stack([*rks, torch.ones((), dtype=torch.float64)])
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.stack(b)


def _unipc_update(x, sigma, sigma_next, m0, older, order, *, corrector_output=None):
    """One UniP (predictor) or UniC (corrector, given the model output at the new point) update
    from (x, sigma) to sigma_next; ``older`` = [(sigma_i, x0_i), ...], most recent first."""
    h = _lam(sigma_next) - _lam(sigma)
    rks = [(_lam(s_i) - _lam(sigma)) / h for s_i, _ in older[:order - 1]]
    d1s = [(m_i - m0) / r for (_, m_i), r in zip(older[:order - 1], rks)]
    h_phi_1, b_h, R, b = _unipc_coefficients(h, rks, order)
    x_next = (sigma_next / sigma) * x - h_phi_1 * m0
    if corrector_output is None:  # predictor UniP-p uses the order - 1 previous points
        if d1s:
            rhos = torch.tensor([0.5], dtype=torch.float64) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            x_next = x_next - b_h * sum(rho * d for rho, d in zip(rhos, d1s))
        return x_next
    rhos = torch.tensor([0.5], dtype=torch.float64) if order == 1 else torch.linalg.solve(R, b)
    correction = sum(rho * d for rho, d in zip(rhos[:-1], d1s)) + rhos[-1] * (corrector_output - m0)
    return x_next - b_h * correction


def sample_unipc(denoiser, x, sigmas, *, order=2, corrector=True, lower_order_final=True, cond=None,
                 callback=None, progress=False):
    """UniPC-p with B(h) = e^h - 1 (bh2), data prediction: predictor UniP of ``order`` (2 or 3)
    and, when a new evaluation arrives, the corrector UniC that refines the point it was made at
    with it (free: it reuses that evaluation). The order ramps up over the first steps and down
    over the last (``lower_order_final``), as in diffusers' UniPCMultistepScheduler."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    n_steps = len(sigmas) - 1
    state = {"history": [], "last": None, "order": 1, "i": 0, "returned": None}

    def step(x, denoised, sigma, sigma_next):
        history, i = state["history"], state["i"]
        # the corrector refines the point the last step made; a state a step callback put in its
        # place (inpainting's paste) is kept as it is
        if corrector and state["last"] is not None and x is state["returned"]:
            last_x, last_sigma = state["last"]
            x = _unipc_update(last_x, last_sigma, sigma, history[0][1], history[1:], state["order"],
                              corrector_output=denoised)
        history.insert(0, (sigma, denoised))
        del history[order:]
        this_order = min(order, n_steps - i if lower_order_final else order, i + 1)
        state.update(last=(x, sigma), order=this_order, i=i + 1)
        if sigma_next == 0:
            return denoised
        state["returned"] = _unipc_update(x, sigma, sigma_next, denoised, history[1:], this_order)
        return state["returned"]

    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)
