"""diffusers interop (genmodels.interop) with diffusers itself as the oracle: on a tiny random
UNet2DModel and the same noise, diffusers' DDIMPipeline / DDPMPipeline and our samplers through
the wrapper agree; the wrapper's x0 at a training step is the scheduler's pred_original_sample;
the schedule maps onto our DiscreteDDPM; save_pretrained folders load (also through the CLI).
diffusers is a test oracle: ``scripts/test`` requires it (tests/conftest.py)."""

import sys

import numpy as np
import pytest
import torch

import genmodels
from genmodels.diffusion import DiscreteDDPM, sigma_grid
from genmodels.errors import GenmodelsError
from genmodels.interop import from_diffusers, schedule_from_scheduler
from genmodels.samplers import SeededNoise
from test_cli import run_cli

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test oracle: scripts/setup test installs it")
import diffusers.pipelines.ddim.pipeline_ddim as ddim_pipeline_module  # noqa: E402
import diffusers.pipelines.ddpm.pipeline_ddpm as ddpm_pipeline_module  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as ddpm_scheduler_module  # noqa: E402

SHAPE = (1, 8, 8)


def tiny_unet(seed=0, **kwargs):
    """A random-init UNet2DModel of ~20k parameters (8x8, one channel)."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8, **kwargs)
    # a random init predicts almost nothing; larger output weights make the comparison bite
    with torch.no_grad():
        unet.conv_out.weight.mul_(20)
    return unet.eval()


def seeded_draws(seed, n, count):
    """The first ``count`` draws of genmodels' per-sample noise for samples seed..seed+n-1: what
    ``Pipeline.sample`` starts from (the first) and steps with (the rest)."""
    noise = SeededNoise(range(seed, seed + n), SHAPE)
    return [noise() for _ in range(count)]


def feed_noise(monkeypatch, draws, *modules):
    """Make diffusers' randn_tensor (in ``modules``) return ``draws`` in order."""
    it = iter(draws)
    for module in modules:
        monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it).clone())


# Not compared: timestep_spacing="linspace". diffusers' DDIM and DDPM steps go from t to
# t - T // steps whatever the spacing, which on a linspace grid (999, 888, ...) is not the next
# grid step (999 -> 899, then evaluated as if at 888); our grid walks its own steps.
@pytest.mark.parametrize("prediction,schedule,spacing,offset", [("epsilon", "linear", "leading", 0),
                                                                ("v_prediction", "squaredcos_cap_v2", "trailing", 0),
                                                                ("sample", "scaled_linear", "leading", 1)])
def test_ddim_matches_diffusers_ddim_pipeline(prediction, schedule, spacing, offset, monkeypatch):
    """DDIMPipeline (eta 0) and our ddim sampler through the wrapper, same initial noise: the
    scheduler's timestep_spacing and steps_offset make the pipeline's default grid (the last
    case is Stable Diffusion's schedule: scaled_linear 0.00085..0.012, steps_offset 1)."""
    unet = tiny_unet()
    sd = schedule == "scaled_linear"
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction,
                                    clip_sample=False, timestep_spacing=spacing, steps_offset=offset,
                                    beta_start=0.00085 if sd else 0.0001, beta_end=0.012 if sd else 0.02)
    n, steps = 3, 10
    feed_noise(monkeypatch, seeded_draws(0, n, 1), ddim_pipeline_module)
    ddim = diffusers.DDIMPipeline(unet, sched)
    theirs = ddim(batch_size=n, num_inference_steps=steps, eta=0.0, output_type="pt").images
    pipe = from_diffusers(ddim, device="cpu")  # a pipeline object: its unet and scheduler
    ours = pipe.sample(n, seed=0, sampler="ddim", steps=steps)
    assert (ours - 2 * theirs + 1).abs().max() < 2e-4
    assert ours.std() > 0.3  # not a trivially flat image


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_matches_diffusers_ddpm_pipeline_with_the_same_noise(prediction, monkeypatch):
    """DDPMPipeline (variance fixed_small) on a 20-step grid and our ddpm sampler, fed the same
    initial and per-step noise: diffusers' draws are made genmodels' per-seed stream."""
    unet = tiny_unet(1)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction, clip_sample=False,
                                    variance_type="fixed_small")
    n, steps = 2, 20
    feed_noise(monkeypatch, seeded_draws(5, n, steps), ddpm_pipeline_module, ddpm_scheduler_module)
    theirs = diffusers.DDPMPipeline(unet, sched)(batch_size=n, num_inference_steps=steps, output_type="pt").images
    ours = from_diffusers(unet, sched, device="cpu").sample(n, seed=5, sampler="ddpm", steps=steps)
    assert (ours - 2 * theirs + 1).abs().max() < 2e-4


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_x0_at_training_steps_is_the_schedulers_pred_original_sample(prediction, clip):
    """D(x_t / sqrt(abar), sigma_n) == DDPMScheduler.step(...).pred_original_sample at steps n,
    clip_sample included; and the net sees exactly the integer timestep n."""
    unet = tiny_unet(2)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction, clip_sample=clip)
    sched.set_timesteps(1000)
    pipe = from_diffusers(unet, sched, device="cpu")
    seen = []
    pipe.net.unet.register_forward_pre_hook(lambda module, args: seen.append(torch.as_tensor(args[1]).clone()))
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn((4, *SHAPE), generator=g)
    for n in (0, 17, 500, 999):
        with torch.no_grad():
            out = unet(x_t, n).sample
            want = sched.step(out, n, x_t).pred_original_sample
            # on our path's own levels (float64; diffusers' alphas_cumprod is float32)
            got = pipe.denoiser(x_t / pipe.path.alphas_cumprod[n].sqrt().float(), pipe.path.sigmas[n])
        assert torch.equal(seen[-1], torch.full((4,), float(n)))
        # float32 rounding, relative to x0's size (eps at n = 999 divides by sqrt(abar) = 0.006)
        assert (got - want).abs().max() <= 3e-5 * want.abs().max().clamp(min=1)
        if clip:
            assert got.abs().max() <= 1


def test_schedule_maps_onto_our_path_and_off_grid_sigmas_interpolate():
    """Each beta_schedule gives diffusers' alphas_cumprod; between two training steps the net
    sees the fractional step that interpolates log sigma linearly (k-diffusion's DiscreteSchedule)."""
    for name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        sched = diffusers.DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012)
        path, _ = schedule_from_scheduler(sched)
        assert isinstance(path, DiscreteDDPM)
        torch.testing.assert_close(path.alphas_cumprod, sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    pipe = from_diffusers(tiny_unet(), diffusers.DDIMScheduler(clip_sample=False), device="cpu")
    seen = []
    pipe.net.unet.register_forward_pre_hook(lambda module, args: seen.append(float(args[1][0])))
    lo, hi = pipe.path.sigmas[300].log(), pipe.path.sigmas[301].log()
    with torch.no_grad():
        pipe.denoiser(torch.zeros((1, *SHAPE)), (lo + 0.25 * (hi - lo)).exp())
    assert seen[-1] == pytest.approx(300.25, abs=1e-4)


def test_steps_offset_shifts_the_leading_grid_as_diffusers_does():
    sched = diffusers.DDIMScheduler(steps_offset=1, clip_sample=False)
    sched.set_timesteps(10)
    path, _ = schedule_from_scheduler(sched)
    steps = path.index(path.grid(10)).round().long()
    assert torch.equal(steps, sched.timesteps.long())  # 901, 801, ..., 1
    torch.testing.assert_close(sigma_grid(path, 10)[:-1], path.sigmas[steps], rtol=1e-12, atol=0)


def test_class_conditional_unet_reads_labels_as_class_labels():
    """num_class_embeds: cond['y'] reaches the UNet as class_labels (a manual DDIMScheduler loop
    with them is the oracle); no labels, or guidance without a null class, is one clear error."""
    unet = tiny_unet(3, num_class_embeds=3)
    with torch.no_grad():
        unet.class_embedding.weight.mul_(10)  # labels must matter
    sched = diffusers.DDIMScheduler(clip_sample=False)
    pipe = from_diffusers(unet, sched, device="cpu")
    labels, steps = [0, 1, 2], 8
    x = seeded_draws(0, 3, 1)[0]
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=torch.tensor(labels)).sample, t, x).prev_sample
    ours = pipe.sample(3, seed=0, labels=labels, sampler="ddim", steps=steps)
    assert (ours - x.clamp(-1, 1)).abs().max() < 2e-4
    other = pipe.sample(3, seed=0, labels=[2, 0, 1], sampler="ddim", steps=steps)
    assert (other - ours).abs().max() > 1e-2
    assert pipe.net_num_classes == 3
    with pytest.raises(GenmodelsError, match="class-conditional: pass labels"):
        pipe.sample(2, steps=2)
    with pytest.raises(GenmodelsError, match="no null class"):
        pipe.sample(2, steps=2, labels=1, guidance=3.0)
    # trained with the last embedding as the null class: guidance uses it
    guided = from_diffusers(unet, sched, num_classes=2, device="cpu")
    assert guided.sample(2, steps=2, labels=1, guidance=3.0).shape == (2, *SHAPE)


def test_save_pretrained_folders_load_through_the_one_load_seam_and_the_cli(tmp_path, capsys):
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/) and a bare UNet folder with a
    scheduler config give the samples of the in-memory model; the CLI samples it."""
    unet = tiny_unet(4)
    sched = diffusers.DDPMScheduler(prediction_type="v_prediction", clip_sample=True, timestep_spacing="trailing")
    diffusers.DDPMPipeline(unet, sched).save_pretrained(tmp_path / "pipe")
    unet.save_pretrained(tmp_path / "unet-only")
    want = from_diffusers(unet, sched, device="cpu").sample(3, seed=1, sampler="dpmpp_2m", steps=6)
    from_pipeline = genmodels.load(f"diffusers:{tmp_path / 'pipe'}", device="cpu")
    assert from_pipeline.path.spacing == "trailing" and from_pipeline.param.name == "v"
    assert torch.equal(from_pipeline.sample(3, seed=1, sampler="dpmpp_2m", steps=6), want)
    bare = from_diffusers(tmp_path / "unet-only", tmp_path / "pipe" / "scheduler", device="cpu")
    assert torch.equal(bare.sample(3, seed=1, sampler="dpmpp_2m", steps=6), want)
    with pytest.raises(GenmodelsError, match="scheduler_config.json"):
        from_diffusers(tmp_path / "unet-only")
    with pytest.raises(GenmodelsError, match="load it as diffusers:"):
        genmodels.load(tmp_path / "pipe")
    code, out, err = run_cli(["sample", f"diffusers:{tmp_path / 'pipe'}", "--n", 4, "--steps", 3, "--sampler",
                              "heun", "--device", "cpu", "--out", tmp_path / "s.npz"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (4, 8, 8, 1)


def test_unsupported_scheduler_settings_are_one_clear_line():
    unet = tiny_unet()
    for settings, message in (({"rescale_betas_zero_snr": True}, "zero SNR"),
                              ({"thresholding": True}, "--threshold"),
                              ({"beta_schedule": "sigmoid"}, "not supported")):
        with pytest.raises(GenmodelsError, match=message):
            from_diffusers(unet, {"_class_name": "DDIMScheduler", **settings})


def test_missing_diffusers_is_one_line_naming_the_install(tmp_path, monkeypatch):
    tiny_unet().save_pretrained(tmp_path / "unet")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(GenmodelsError, match=r"pip install diffusers .*genmodels\[peers\]"):
        from_diffusers(tmp_path / "unet", {"num_train_timesteps": 1000})


def test_eval_scores_a_diffusers_folder_by_the_protocol(tmp_path, capsys):
    """`genmodels eval diffusers:FOLDER@digits`: the protocol's likelihood (the DDPM bound on
    our path) runs on the diffusers model against the named dataset at the model's size."""
    import json

    diffusers.DDPMPipeline(tiny_unet(5), diffusers.DDPMScheduler(clip_sample=False)).save_pretrained(tmp_path / "m")
    code, out, err = run_cli(["eval", f"diffusers:{tmp_path / 'm'}@digits", "--metrics", "nll", "--nll-n", 4,
                              "--nll-steps", 4, "--seeds", 0, "--device", "cpu", "--json", "--no-log"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert np.isfinite(result["nll_bpd"]) and result["nll_bpd"] > 0
    code, _, err = run_cli(["eval", f"diffusers:{tmp_path / 'm'}", "--metrics", "fd_cnn", "--n", 4, "--seeds", 0,
                            "--device", "cpu", "--no-log"], capsys)
    assert code == 2 and "dataset 'diffusers' has no built-in" in err
