"""The seams wave 2 builds on: conditioning as one dict through objective, network, denoiser and
guidance; the UNet's cross-attention, concatenation and residual slots; sampling that starts
mid-way and is watched by a step callback; no import cycles."""

import ast
import math
from pathlib import Path

import pytest
import torch

from genmodels.cond import COND_KEYS, cat, drop, null_value, nulled
from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS, sigma_grid
from genmodels.diffusion.guidance import CFGDenoiser
from genmodels.errors import ConfigError
from genmodels.nn import UNet
from genmodels.objectives import DiffusionObjective
from genmodels.samplers import SAMPLERS, SamplingCancelled, SeededNoise, generate, run_sampler, start_index

SMALL = dict(image_size=8, base_channels=16, channel_mult=(1, 2), attn_resolutions=(), num_heads=2)


def perturbed(model, seed=0):
    """Randomise every parameter: zero-initialised layers (output conv, attention projections)
    otherwise hide whether a condition reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def text(batch, length=5, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, -2:] = False  # padding
    return {"states": torch.randn(batch, length, dim, generator=g), "mask": mask,
            "pooled": torch.randn(batch, dim, generator=g)}


# ---- the cond dict end to end -----------------------------------------------------------------
def test_cfg_on_one_key_keeps_the_other_and_equals_the_hand_combined_formula():
    """Class guided, control image not: uncond nulls y only; the guided output is
    D(x | null y, image) + w (D(x | y, image) - D(x | null y, image)), in one batched forward."""
    torch.manual_seed(0)
    net = perturbed(UNet(**SMALL, num_classes=3, concat_cond=["image"]))
    d = NetDenoiser(net, DiscreteDDPM(schedule="cosine"), PARAMETERIZATIONS["v"])
    x = torch.randn(4, 1, 8, 8)
    cond = {"y": torch.tensor([0, 1, 2, 1]), "image": torch.randn(4, 1, 8, 8)}
    with torch.no_grad():
        conditional = d(x, 2.0, cond)
        unconditional = d(x, 2.0, {"y": torch.full((4,), 3), "image": cond["image"]})
        guided = CFGDenoiser(d, 2.5, nulled(net, ["y"]))(x, torch.tensor(2.0), cond)
        no_control = d(x, 2.0, {"y": cond["y"], "image": torch.zeros_like(cond["image"])})
    torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(conditional, no_control, atol=1e-3)  # the control image reaches the output
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # and so does the class


def test_cfg_on_both_keys_nulls_both():
    torch.manual_seed(0)
    net = perturbed(UNet(**SMALL, num_classes=3, context_dim=12, cross_attn_resolutions=(4,)))
    d = NetDenoiser(net, DiscreteDDPM(), PARAMETERIZATIONS["eps"])
    x, cond = torch.randn(2, 1, 8, 8), {"y": torch.tensor([0, 2]), "text": text(2)}
    with torch.no_grad():
        uncond = nulled(net, ["y", "text"])(cond)
        both = CFGDenoiser(d, 0.0, nulled(net, ["y", "text"]))(x, torch.tensor(1.0), cond)  # w = 0: unconditional
        torch.testing.assert_close(both, d(x, 1.0, uncond))
        # the null text is the learned token, unmasked only at the first position
        assert torch.equal(uncond["text"]["mask"][:, 0], torch.ones(2, dtype=torch.bool))
        assert not uncond["text"]["mask"][:, 1:].any()
        # with no text given, the net reads its null text: the same output as the null value
        torch.testing.assert_close(d(x, 1.0, {"y": cond["y"]}), d(x, 1.0, {"y": cond["y"], "text": uncond["text"]}),
                                   rtol=1e-5, atol=1e-6)


def test_the_objective_passes_every_key_to_the_net_and_drops_each_at_its_own_rate():
    seen = []

    class Spy(torch.nn.Module):
        num_classes = 10

        def forward(self, x, c_noise, cond):
            seen.append(cond)
            return torch.zeros_like(x)

    net = Spy()
    n = 20_000
    y, image = torch.randint(0, 10, (n,)), torch.randn(n, 1, 2, 2) + 5  # never zero
    objective = DiffusionObjective(DiscreteDDPM(), PARAMETERIZATIONS["eps"], cond_dropout={"y": 0.3, "image": 0.1},
                                   null=lambda key, value: null_value(net, key, value))
    objective(net, {"x": torch.zeros(n, 1, 2, 2), "cond": {"y": y, "image": image}},
              generator=torch.Generator().manual_seed(0))
    cond = seen[0]
    assert set(cond) == {"y", "image"}
    y_dropped = cond["y"] == 10
    image_dropped = (cond["image"] == 0).flatten(1).all(1)
    for dropped, rate in ((y_dropped, 0.3), (image_dropped, 0.1)):
        assert abs(dropped.float().mean().item() - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    assert torch.equal(cond["y"][~y_dropped], y[~y_dropped])
    assert torch.equal(cond["image"][~image_dropped], image[~image_dropped])
    # independent draws: P(both) = 0.3 * 0.1
    assert abs((y_dropped & image_dropped).float().mean().item() - 0.03) < 4 * math.sqrt(0.03 * 0.97 / n)


def test_unknown_keys_and_rates_are_refused_in_the_config():
    from genmodels.config import load_config

    with pytest.raises(ConfigError, match="diffusion.cond_dropout: unknown conditioning key"):
        load_config("mnist-ddpm", ["diffusion.cond_dropout={colour: 0.1}"])
    with pytest.raises(ConfigError, match=r"diffusion.cond_dropout.y must lie in \[0, 1\)"):
        load_config("mnist-ddpm", ["diffusion.cond_dropout={y: 1.5}"])


def test_cat_and_drop_handle_nested_text_values():
    a, b = text(2, seed=0), text(3, seed=1)
    joined = cat([{"text": a}, {"text": b}])["text"]
    assert joined["states"].shape == (5, 5, 12) and torch.equal(joined["mask"][2:], b["mask"])
    net = UNet(**SMALL, context_dim=12, cross_attn_resolutions=(8,))
    out = drop({"text": a}, {"text": 0.999}, lambda k, v: null_value(net, k, v), generator=torch.Generator())
    assert torch.equal(out["text"]["mask"], nulled(net, ["text"])({"text": a})["text"]["mask"])


# ---- the UNet's slots ---------------------------------------------------------------------------
def test_cross_attention_and_concat_change_the_output_and_train_a_step():
    torch.manual_seed(0)
    net = perturbed(UNet(**SMALL, context_dim=12, cross_attn_resolutions=(8, 4), concat_cond=["mask", "masked"]))
    x, c = torch.randn(2, 1, 8, 8), torch.full((2,), 300.0)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    cond = {"text": text(2), "mask": mask, "masked": x * (1 - mask)}
    with torch.no_grad():
        out = net(x, c, cond)
        other_text = net(x, c, {**cond, "text": text(2, seed=5)})
        other_mask = net(x, c, {**cond, "mask": 1 - mask})
        padded = {**cond["text"], "states": cond["text"]["states"].clone()}
        padded["states"][:, -2:] += 100.0  # masked positions: must not matter
        masked_out = net(x, c, {**cond, "text": padded})
    assert not torch.allclose(out, other_text, atol=1e-3)
    assert not torch.allclose(out, other_mask, atol=1e-3)
    torch.testing.assert_close(masked_out, out, rtol=1e-5, atol=1e-5)
    # a toy training step: every new part gets a gradient and the loss falls
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = torch.randn(2, 1, 8, 8)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (net(x, c, cond) - target).square().mean()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0]
    for name in ("down.0.cross.kv.weight", "mid_cross.q.weight", "text_embed.weight", "conv_in.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    assert net.conv_in.in_channels == 1 + 1 + 1  # x, mask, masked


def test_zero_residuals_leave_the_output_bit_identical_and_others_change_it():
    torch.manual_seed(0)
    net = perturbed(UNet(**SMALL, num_classes=3))
    x, c, cond = torch.randn(2, 1, 8, 8), torch.full((2,), 10.0), {"y": torch.tensor([1, 2])}
    zeros = {"skips": [torch.zeros(2, ch, r, r) for ch, r in zip(net.skip_channels, net.skip_resolutions)],
             "mid": torch.zeros(2, net.mid_channels, 4, 4)}
    with torch.no_grad():
        plain = net(x, c, cond)
        assert torch.equal(net(x, c, cond, residuals=zeros), plain)
        nudged = {**zeros, "mid": torch.full_like(zeros["mid"], 0.5)}
        assert not torch.allclose(net(x, c, cond, residuals=nudged), plain, atol=1e-4)
    with pytest.raises(ValueError, match="residuals must be"):
        net(x, c, cond, residuals={"skips": zeros["skips"][:1], "mid": zeros["mid"]})


def test_with_the_options_off_the_unet_is_the_plain_one():
    """No new parameters, buffers or attributes with weights: old checkpoints load unchanged."""
    plain = UNet(**SMALL, num_classes=3)
    names = [k for k in plain.state_dict()]
    assert not any(part in k for k in names for part in ("cross", "text", "null_text"))
    assert plain.conv_in.in_channels == 1 and plain.cond_keys == {"y"}
    with pytest.raises(ConfigError, match="context_dim and model.cross_attn_resolutions go together"):
        UNet(**SMALL, cross_attn_resolutions=(8,))
    with pytest.raises(ConfigError, match="model.concat_cond: unknown conditioning key"):
        UNet(**SMALL, concat_cond=["depth"])


# ---- sampling mid-way, and the step callback -------------------------------------------------------
def gaussian_denoiser(x, sigma, cond=None):
    """The exact denoiser of N(0.3, 0.5^2) data in VE coordinates."""
    s2 = 0.25
    return 0.3 + s2 / (s2 + torch.as_tensor(sigma, dtype=x.dtype) ** 2) * (x - 0.3)


class ToyVE:
    """A VE path for generate(): prior std = sigma, grid from 20 down."""

    t_min = 0.0

    def prior_std(self, sigma):
        return torch.as_tensor(sigma)

    def to_sigma(self, t):
        return 0.002 * (20 / 0.002) ** t

    def grid(self, steps, spacing="linspace"):
        return torch.linspace(1, 0.0, steps + 1, dtype=torch.float64)[:-1]


SAMPLER_OPTIONS = {"rk45": {"rtol": 1e-3, "atol": 1e-3}}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_x_start_at_the_grid_top_equals_plain_sampling(name):
    path, shape, seeds = ToyVE(), (3,), range(4)
    kwargs = dict(shape=shape, seeds=seeds, sampler=name, steps=6, options=SAMPLER_OPTIONS.get(name))
    plain = generate(gaussian_denoiser, path, **kwargs)
    sigmas = sigma_grid(path, 6)
    start = SeededNoise(seeds, shape)() * float(sigmas[0])  # what plain sampling starts from
    again = generate(gaussian_denoiser, path, x_start=start, start_sigma=float(sigmas[0]), **kwargs)
    assert torch.equal(again, plain)
    assert torch.equal(generate(gaussian_denoiser, path, x_start=start, strength=1.0, **kwargs), plain)


@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "euler_maruyama", "ddpm"])
def test_starting_mid_way_continues_the_run_that_got_there(name):
    """From the state a full run had after step k, at its noise level, the last steps give the
    full run's result (single-step samplers; stochastic ones draw the same noise when the
    continuation's stream is the rest of the full run's)."""
    path = ToyVE()
    sigmas = sigma_grid(path, 8)
    states = {}
    full = run_sampler(name, gaussian_denoiser, torch.full((2, 3), 20.0), sigmas,
                       noise=SeededNoise(range(2), (3,)), callback=lambda i, s, x, d: states.setdefault(i, x.clone()))
    k = 3
    noise = SeededNoise(range(2), (3,))
    for _ in range(k + 1 if name in ("euler_maruyama", "ddpm") else 0):
        noise()  # the draws the full run's first k + 1 steps used
    rest = run_sampler(name, gaussian_denoiser, states[k], start_index(sigmas, start_sigma=float(sigmas[k + 1])),
                       noise=noise)
    torch.testing.assert_close(rest, full, rtol=1e-12, atol=1e-12)


def test_strength_runs_the_last_share_of_the_steps_and_refuses_nonsense():
    sigmas = sigma_grid(ToyVE(), 10)
    assert torch.equal(start_index(sigmas, strength=0.6), sigmas[4:])  # 6 of 10 steps
    assert torch.equal(start_index(sigmas, start_sigma=float(sigmas[2])), sigmas[2:])
    between = start_index(sigmas, start_sigma=float(sigmas[3] + sigmas[4]) / 2)
    assert len(between) == len(sigmas) - 3 and between[0] > sigmas[4]
    with pytest.raises(ConfigError, match="strength must lie in"):
        start_index(sigmas, strength=1.5)
    with pytest.raises(ConfigError, match="start_sigma must lie in"):
        start_index(sigmas, start_sigma=100.0)
    with pytest.raises(ConfigError, match="needs start_sigma or strength"):
        generate(gaussian_denoiser, ToyVE(), shape=(3,), seeds=range(2), x_start=torch.zeros(2, 3))


def test_init_images_at_low_strength_stay_close_and_high_strength_moves_away():
    path, x0 = ToyVE(), torch.full((64, 3), 2.0)  # far from the data's mean 0.3
    kwargs = dict(shape=(3,), seeds=range(64), sampler="ddim", steps=20, init_images=x0)
    distance = [(generate(gaussian_denoiser, path, strength=s, **kwargs) - x0).abs().mean().item()
                for s in (0.1, 0.5, 1.0)]
    assert distance[0] < distance[1] < distance[2]
    assert distance[0] < 0.05


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_callback_that_pastes_known_values_keeps_them_exact_at_the_end(name):
    """RePaint's paste: after every step the known entries are set to the known values noised to
    the step's level; at the end (sigma 0) they are exactly the known values."""
    known, keep = torch.tensor([[1.5, -0.7, 0.0]]).expand(4, 3), torch.tensor([True, False, True])
    levels = []

    def paste(i, sigma, x, denoised):
        levels.append(float(sigma))
        return torch.where(keep, known + float(sigma) * torch.randn_like(x), x)

    out = generate(gaussian_denoiser, ToyVE(), shape=(3,), seeds=range(4), sampler=name, steps=6,
                   options=SAMPLER_OPTIONS.get(name), callback=paste)
    assert levels[-1] == 0.0 and levels == sorted(levels, reverse=True)
    assert torch.equal(out[:, keep], known[:, keep])
    assert not torch.equal(out[:, ~keep], known[:, ~keep])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_callback_reports_every_step_and_can_cancel(name):
    calls = []
    generate(gaussian_denoiser, ToyVE(), shape=(3,), seeds=range(2), sampler=name, steps=5,
             options=SAMPLER_OPTIONS.get(name), callback=lambda i, sigma, x, denoised: calls.append(i))
    assert calls == list(range(len(calls))) and len(calls) >= 5

    def cancel(i, sigma, x, denoised):
        if i == 1:
            raise SamplingCancelled("stopped by the user")

    with pytest.raises(SamplingCancelled):
        generate(gaussian_denoiser, ToyVE(), shape=(3,), seeds=range(2), sampler=name, steps=5,
                 options=SAMPLER_OPTIONS.get(name), callback=cancel)


def test_the_callback_learns_which_samples_a_batch_holds():
    batches = []
    generate(gaussian_denoiser, ToyVE(), shape=(3,), seeds=range(5), steps=2, batch_size=2,
             callback=lambda i, sigma, x, denoised, samples: batches.append((samples, len(x))))
    seeds = list(range(5))
    assert [(seeds[s], n) for s, n in batches][::2] == [([0, 1], 2), ([2, 3], 2), ([4], 1)]


# ---- the package has no import cycles ----------------------------------------------------------
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "genmodels"


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions alike.
    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    modules = {}
    for file in root.rglob("*.py"):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (file, package)
    graph = {}
    for name, (file, package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(root.name) and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle_and_metrics_never_import_families():
    graph = import_graph(PACKAGE)
    assert "genmodels.families.loading" in graph and "genmodels.metrics.protocol" in graph
    assert cycles(graph) == []
    metrics = [m for m in graph if m.startswith("genmodels.metrics")]
    reached, todo = set(), list(metrics)
    while todo:  # everything the metrics reach, directly or not
        for dep in graph[todo.pop()]:
            if dep not in reached:
                reached.add(dep)
                todo.append(dep)
    assert not any(m.startswith("genmodels.families") for m in reached)


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "genmodels"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")  # a function-level import counts
    (pkg / "c.py").write_text("import genmodels.a\n")
    assert cycles(import_graph(pkg)) == [["genmodels.a", "genmodels.sub.b"]]
    assert COND_KEYS  # the registry is importable at the bottom of the package


# ---- found in review: each of these failed before its fix -----------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_replaced_state_is_where_sampling_continues(name):
    """After the callback puts -50 or +50 in place of x at step 0, the next step starts there
    (UniPC's corrector used to rebuild x from the step before and drop the replacement)."""
    after_one = {}
    for value in (-50.0, 50.0):
        def replace(i, sigma, x, denoised, value=value):
            if i == 1:
                after_one[value] = x.clone()
            return torch.full_like(x, value) if i == 0 else None

        generate(gaussian_denoiser, ToyVE(), shape=(3,), seeds=range(2), sampler=name, steps=6,
                 options=SAMPLER_OPTIONS.get(name), callback=replace)
    # the same seeds: had the replacement been dropped, both states would be equal (UniPC's were);
    # carried through one more step it leaves them 5.6 (pc) to 41 (rk45) apart; the consistency
    # sampler reads x only through the denoiser at the next level, which shrinks the gap (to 1.3)
    assert (after_one[50.0] - after_one[-50.0]).min() > (1 if name == "consistency" else 4)


def test_likelihoods_read_the_conditioning(tmp_path):
    """A class-conditional run's held-out bound and ODE likelihood use its labels (they used to
    call the denoiser with **cond and fail on a conditional run)."""
    from genmodels.config import load_config
    from genmodels.data import load_dataset
    from genmodels.families import load
    from genmodels.train.run import train
    from tests.conftest import TINY_UNET

    train(load_config("mnist-cfg", TINY_UNET + ["train.images=32", "train.batch_size=16", "train.device=cpu",
                                               "train.minutes=null"]), tmp_path / "cfg")
    pipe = load(tmp_path / "cfg", device="cpu")
    torch.nn.init.normal_(pipe.net.class_embed.weight, std=1.0)  # make the labels matter
    torch.nn.init.normal_(pipe.net.conv_out.weight, std=0.05)
    test = load_dataset("mnist", split="test")
    x, y = test.x[:4], test.y[:4]
    for method in ("vlb", "ode"):
        scores = [pipe.nll_scores(x, cond={"y": labels}, nll_method=method, nll_steps=3,
                                  generator=torch.Generator().manual_seed(0))["nll_bpd"]
                  for labels in (y, torch.full_like(y, 10))]
        assert all(math.isfinite(v) for v in scores) and scores[0] != scores[1], (method, scores)


def test_guidance_on_any_key_and_conditioning_checked_against_the_net(tmp_path):
    from genmodels.families.diffusion import Pipeline

    torch.manual_seed(0)
    net = perturbed(UNet(**SMALL, concat_cond=["image"], num_classes=3))
    pipe = Pipeline(tmp_path, None, net, DiscreteDDPM(), PARAMETERIZATIONS["eps"], (1, 8, 8), (), torch.device("cpu"))
    from genmodels.config import SampleConfig

    pipe.config = type("C", (), {"model": type("M", (), {"options": {"num_classes": 3}})(), "sample": SampleConfig()})()
    image = torch.randn(1, 1, 8, 8)
    kwargs = dict(sampler="ddim", steps=3, progress=False)
    guided = pipe.sample(2, cond={"image": image}, labels=1, guidance=3.0, guidance_keys=["image"], **kwargs)
    plain = pipe.sample(2, cond={"image": image}, labels=1, **kwargs)
    assert not torch.allclose(guided, plain)
    with pytest.raises(ConfigError, match="guide on: text"):
        pipe.sample(2, cond={"image": image}, labels=1, guidance=3.0, guidance_keys=["text"], **kwargs)
    with pytest.raises(ConfigError, match=r"this model reads no \['mask'\]"):
        pipe.sample(2, cond={"image": image, "mask": image}, labels=1, **kwargs)
    with pytest.raises(ConfigError, match="class 3 is out of range"):
        pipe.sample(2, cond={"image": image, "y": torch.tensor([3])}, **kwargs)


def test_text_states_of_another_dtype_and_dicts_in_another_key_order():
    net = UNet(**SMALL, context_dim=12, cross_attn_resolutions=(4,))
    states = {k: (v.double() if v.is_floating_point() else v) for k, v in text(2).items()}
    assert net(torch.randn(2, 1, 8, 8), torch.zeros(2), {"text": states}).dtype == torch.float32
    a = {"y": torch.tensor([1]), "image": torch.zeros(1, 1, 2, 2)}
    b = {"image": torch.ones(1, 1, 2, 2), "y": torch.tensor([2])}
    joined = cat([a, b])
    assert torch.equal(joined["y"], torch.tensor([1, 2])) and joined["image"].shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="disagree on the keys of 'text'"):
        cat([{"text": {"states": torch.zeros(1, 2, 3)}}, {"text": {"mask": torch.zeros(1, 2)}}])


def test_the_cli_takes_family_options_before_the_run_directory(tmp_path, capsys):
    from genmodels.cli import main
    from genmodels.config import load_config
    from genmodels.train.run import train
    from tests.conftest import TINY_UNET

    train(load_config("mnist-ddpm", TINY_UNET + ["train.images=16", "train.batch_size=16", "train.device=cpu",
                                                "train.minutes=null"]), tmp_path / "run")
    for args in (["--steps", "3", "--sampler=euler", tmp_path / "run"], [tmp_path / "run", "--steps", "3"]):
        main(["sample", *map(str, args), "--n", "2", "--out", str(tmp_path / "g.npz")])
        assert "2 samples in" in capsys.readouterr().out
