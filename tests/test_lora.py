"""LoRA adapters (genmodels.nn.lora, genmodels.lora, the lora family): the adapter algebra
(B = 0 is the identity, merge == unmerged forward, unmerge restores), the layers the C++ kernels read
by ``.weight``, peft as the oracle (same adapter, same output; our file loads into peft), files,
hash checks, and a fine-tune run end to end."""

import copy

import pytest
import torch
from torch import nn

from genmodels.config import load_config
from genmodels.errors import CheckpointError, ConfigError
from genmodels.families import load, load_run
from genmodels.families.lora import ADAPTER_FILE, finetune_config
from genmodels.lora import PEFT_PREFIX, read_adapter, save_adapter
from genmodels.nn.gan.dcgan import DCGenerator
from genmodels.nn.lora import adapters_of, bake, inject, merge, resolve_targets, set_scale, unmerge
from genmodels.nn.unet import UNet
from genmodels.nn.vae_nets import ConvVAE
from genmodels.train.run import train

CL = torch.channels_last


def tiny_unet(**kw):
    torch.manual_seed(0)
    net = UNet(image_size=16, base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,), num_heads=2,
               num_classes=3, **kw).eval()
    with torch.no_grad():  # the zero-initialised output layers of a fresh UNet would hide every difference
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return net


def unet_inputs(n=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 16, 16, generator=g), torch.rand(n, generator=g) * 500, {"y": torch.tensor([0, 1, 2])}


def randomise(adapters, seed=2):
    """Non-zero B (a trained-looking adapter): B = 0 would make every check below trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g) * 0.1)


def test_fresh_adapter_leaves_outputs_unchanged():
    net = tiny_unet()
    x, c, cond = unet_inputs()
    before = net(x, c, cond)
    adapters = inject(net, "all", rank=4, alpha=8)
    assert len(adapters) > 10
    assert torch.equal(net(x, c, cond), before)


def test_merge_equals_unmerged_and_unmerge_restores_weights():
    net = tiny_unet()
    x, c, cond = unet_inputs()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    adapters = inject(net, ["attn", "conv"], rank=4, alpha=4)
    randomise(adapters)
    unmerged = net(x, c, cond)
    assert not torch.allclose(unmerged, tiny_unet()(x, c, cond), atol=1e-4)  # the adapter does something
    merge(net)
    torch.testing.assert_close(net(x, c, cond), unmerged, atol=1e-5, rtol=0)
    unmerge(net)
    torch.testing.assert_close(net(x, c, cond), unmerged, atol=1e-5, rtol=0)
    bake(net)  # unmerged adapters baked away ... then the deltas taken back out by hand
    for name, adapter in adapters.items():
        net.get_submodule(name).weight.data -= adapter.delta()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, original[key], atol=1e-6, rtol=0)


def test_unmerge_restores_stored_weights():
    net = tiny_unet()
    adapters = inject(net, "all", rank=2)
    randomise(adapters)
    stored = {n: net.get_submodule(n).parametrizations.weight.original.clone() for n in adapters}
    merge(net)
    assert any(not torch.equal(net.get_submodule(n).parametrizations.weight.original, w) for n, w in stored.items())
    unmerge(net)
    for name, weight in stored.items():
        torch.testing.assert_close(net.get_submodule(name).parametrizations.weight.original, weight, atol=1e-6, rtol=0)


def test_set_scale_zero_is_the_base_and_two_adapters_add():
    net = tiny_unet()
    x, c, cond = unet_inputs()
    base = net(x, c, cond)
    randomise(inject(net, "attn", rank=2), seed=3)
    randomise(inject(net, "attn", rank=4), seed=4)  # a second adapter on the same layers chains
    assert all(len(a) == 2 for a in adapters_of(net).values())
    merge(net)
    set_scale(net, 0.0)  # merged ones stay merged, at the new scale
    torch.testing.assert_close(net(x, c, cond), base, atol=1e-6, rtol=0)


def test_only_adapter_parameters_get_gradients():
    net = tiny_unet().requires_grad_(False)
    adapters = inject(net, ["attn", "conv"], rank=4)
    randomise(adapters)
    x, c, cond = unet_inputs()
    net(x, c, cond).square().mean().backward()
    own = {id(p) for a in adapters.values() for p in a.parameters()}
    for name, p in net.named_parameters():
        if id(p) in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("layer", ["conv_out", "up.0"])
def test_layers_read_by_weight_see_the_adapter(layer, fused_kernels):
    """conv_out runs the C++ output-conv kernel and Upsample the phase-split conv, both reading
    ``conv.weight``: the adapter must change the output exactly as merged weights do."""
    net = tiny_unet().to(memory_format=CL)
    ups = [n for n, m in net.named_modules() if type(m).__name__ == "Upsample"]
    name = "conv_out" if layer == "conv_out" else ups[0] + ".conv"
    x, c, cond = unet_inputs()
    x = x.contiguous(memory_format=CL)
    base = net(x, c, cond)
    plain = copy.deepcopy(net)
    adapters = inject(net, [name], rank=2)
    randomise(adapters)
    with torch.no_grad():
        plain.get_submodule(name).weight += adapters[name].delta()
    adapted = net(x, c, cond)
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(adapted, plain(x, c, cond), atol=1e-5, rtol=0)


def test_target_pattern_that_matches_nothing_names_the_layers():
    with pytest.raises(ConfigError, match=r"LoRA target 'mid\.nothing\*' matches no Linear or Conv2d layer of the "
                                          r"UNet; its layers: .*conv_in"):
        resolve_targets(tiny_unet(), "attn,mid.nothing*")
    assert resolve_targets(tiny_unet(), "conv_out") == ["conv_out"]
    assert all(n.endswith(("qkv", "proj")) for n in resolve_targets(tiny_unet(), "attn"))


def test_gan_generator_and_vae_decoder_adapt_merge_save_load(tmp_path):
    torch.manual_seed(0)
    for net, targets, inputs in [(DCGenerator(z_dim=8, base_channels=8, norm="none").eval(), "all", (torch.randn(2, 8),)),
                                 (ConvVAE(base_channels=8, hidden=32).eval(), "decoder.*", (torch.randn(2, 16),))]:
        forward = net if isinstance(net, DCGenerator) else net.decode
        base = forward(*inputs)
        adapters = inject(net, targets, rank=2)
        randomise(adapters)
        adapted = forward(*inputs)
        assert (adapted - base).abs().max() > 1e-4
        path = save_adapter(adapters, tmp_path / f"{type(net).__name__}.safetensors",
                            meta={"base": "x", "base_weights": "ema", "base_sha256": "0", "rank": 2, "alpha": 2,
                                  "targets": [targets]})
        bake(net)
        torch.testing.assert_close(forward(*inputs), adapted, atol=1e-5, rtol=0)
        fresh = copy.deepcopy(net)  # baked weights minus the file's deltas is the base again
        for name, adapter in read_adapter(path).adapters.items():
            fresh.get_submodule(name).weight.data -= adapter.delta()
        fwd = fresh if isinstance(fresh, DCGenerator) else fresh.decode
        torch.testing.assert_close(fwd(*inputs), base, atol=1e-5, rtol=0)


# ---- peft as the oracle ------------------------------------------------------------------------
def test_peft_adapter_with_our_factors_gives_our_output(tmp_path):
    peft = pytest.importorskip("peft")
    net = tiny_unet()
    x, c, cond = unet_inputs()
    ours = copy.deepcopy(net)
    adapters = inject(ours, ["attn", "conv"], rank=4, alpha=8)
    randomise(adapters)
    # peft wraps the layers (forward: base(x) + scaling * B(A(x))): fine for layers that are called
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=sorted(adapters), lora_dropout=0.0)
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(net))
    with torch.no_grad():
        for name, adapter in adapters.items():
            layer = theirs.get_submodule(name)
            layer.lora_A["default"].weight.copy_(adapter.lora_A)
            layer.lora_B["default"].weight.copy_(adapter.lora_B)
    torch.testing.assert_close(theirs(x, c, cond), ours(x, c, cond), atol=1e-5, rtol=0)

    # our file, read by peft's state-dict loader onto the run's modules (names start with "net")
    save_adapter({f"net.{k}": v for k, v in adapters.items()}, tmp_path / "adapter_model.safetensors",
                 meta={"base": "x", "base_weights": "ema", "base_sha256": "0", "rank": 4, "alpha": 8,
                       "targets": ["attn", "conv"]})
    from safetensors.torch import load_file

    loaded = read_adapter(tmp_path / "adapter_model.safetensors")
    file_config = {k: v for k, v in loaded.peft_config.items() if k != "peft_type"}
    model = peft.get_peft_model(nn.ModuleDict({"net": copy.deepcopy(net)}), peft.LoraConfig(**file_config))
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(tmp_path / "adapter_model.safetensors").items()}
    result = peft.set_peft_model_state_dict(model, {PEFT_PREFIX + k: v for k, v in state.items()})
    assert not result.unexpected_keys
    torch.testing.assert_close(model.base_model.model["net"](x, c, cond), ours(x, c, cond), atol=1e-5, rtol=0)
    # and peft's own directory loader reads it (adapter_config.json + adapter_model.safetensors)
    again = peft.PeftModel.from_pretrained(nn.ModuleDict({"net": copy.deepcopy(net)}), str(tmp_path))
    torch.testing.assert_close(again.base_model.model["net"](x, c, cond), ours(x, c, cond), atol=1e-5, rtol=0)


# ---- runs: finetune, files, hash checks --------------------------------------------------------
@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    from conftest import TINY_UNET

    root = tmp_path_factory.mktemp("lora")
    quick = TINY_UNET + ["model.num_classes=auto", "train.batch_size=16", "train.log_every_images=16",
                         "train.sample_every_images=100000", "train.checkpoint_every_images=100000",
                         "train.warmup_images=0", "train.device=cpu", "train.images=32", "train.minutes=null"]
    for seed in (0, 1):
        train(load_config("mnist-cfg", quick + [f"train.seed={seed}"]), root / f"base{seed}")
    return root


def test_finetune_run_holds_adapters_only_and_samples_like_the_merged_base(base_runs):
    base, run = base_runs / "base0", base_runs / "adapted"
    cfg = finetune_config(base, rank=2, targets="attn,conv",
                          overrides=["train.images=32", "data.exclude_classes=[0,1,2,4,5,6,7,8,9]", "train.lr=1e-2"])
    train(cfg, run)
    from genmodels.families.lora import export_adapter

    adapter_file = export_adapter(run)
    assert adapter_file.name == ADAPTER_FILE
    model_size, base_size = (run / "ema.safetensors").stat().st_size, (base / "ema.safetensors").stat().st_size
    assert model_size < base_size / 10 and adapter_file.stat().st_size < base_size / 10
    # the base is untouched; the adapters trained (B moved off zero)
    assert any(a.lora_B.abs().sum() > 0 for a in read_adapter(adapter_file).adapters.values())
    meta = read_adapter(adapter_file).meta
    assert (meta["rank"], meta["base"]) == (2, str(base.resolve()))

    via_run = load(run, device="cpu").sample(4, seed=0, labels=3, steps=4)
    via_file = load(base, device="cpu", lora=[(adapter_file, 1.0)]).sample(4, seed=0, labels=3, steps=4)
    plain = load(base, device="cpu").sample(4, seed=0, labels=3, steps=4)
    torch.testing.assert_close(via_run, via_file, atol=1e-5, rtol=0)
    assert (via_run - plain).abs().max() > 1e-4
    half = load(base, device="cpu", lora=[f"{adapter_file}:0.5"]).sample(4, seed=0, labels=3, steps=4)
    assert 0 < (half - plain).abs().max() < (via_run - plain).abs().max() * 1.5

    # an adapter of base0 on base1 (other weights): one line, refused
    with pytest.raises(CheckpointError, match="was trained on .*base0 .*not on the weights of"):
        load(base_runs / "base1", device="cpu", lora=[adapter_file])
    # the run resumes like any run
    assert train(load_config_from(run, "train.images=48"), run, resume=True).images_seen == 48
    assert sorted(load_run(run, device="cpu").modules["lora"].names) == list(read_adapter(adapter_file).adapters)


def load_config_from(run, *overrides):
    from genmodels.config import apply_overrides, from_dict
    from genmodels.families import read_run_config

    return from_dict(apply_overrides(read_run_config(run)["config"], list(overrides)))


def test_cli_sample_with_lora_and_bad_targets(base_runs, tmp_path, capsys):
    from genmodels.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", str(base_runs / "base0"), "--lora-targets", "nope*", "--out", str(tmp_path / "x"),
              "train.images=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: LoRA target 'nope*' matches no")
    main(["finetune", str(base_runs / "base0"), "--lora-rank", "1", "--out", str(tmp_path / "a"), "train.images=16"])
    adapter = tmp_path / "a" / ADAPTER_FILE
    main(["sample", str(base_runs / "base0"), "--n", "4", "--steps", "2", "--lora", f"{adapter}:0.8",
          "--lora", str(adapter), "--out", str(tmp_path / "grid.png")])
    assert (tmp_path / "grid.png").is_file()
    capsys.readouterr()  # the fine-tune's progress lines
    with pytest.raises(SystemExit):
        main(["sample", str(base_runs / "base1"), "--n", "4", "--steps", "2", "--lora", str(adapter),
              "--out", str(tmp_path / "grid.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on" in err[0]


QUICK = ["train.batch_size=16", "train.log_every_images=16", "train.sample_every_images=100000",
         "train.checkpoint_every_images=100000", "train.warmup_images=0", "train.device=cpu", "train.images=32",
         "train.minutes=null"]


def test_vae_decoder_finetunes_and_a_gan_is_refused_with_one_line(tmp_path):
    """The VAE objective is one phase: LoRA on its decoder's Linears trains like a diffusion run's.
    A GAN alternates two optimizer steps (D, G): refused, pointing at the Python API."""
    train(load_config("mnist-vae", QUICK + ["model.base_channels=4", "model.hidden=16"]), tmp_path / "vae")
    train(finetune_config(tmp_path / "vae", rank=2, targets="vae.decoder.*", overrides=["train.images=32"]),
          tmp_path / "vae-lora")
    adapters = load_run(tmp_path / "vae-lora", device="cpu").modules["lora"].as_dict()
    assert adapters and all(n.startswith("vae.decoder.") for n in adapters)
    assert any(a.lora_B.abs().sum() > 0 for a in adapters.values())
    x = load(tmp_path / "vae-lora", device="cpu").sample(2, seed=0)
    assert x.shape == (2, 1, 28, 28)

    train(load_config("mnist-dcgan", QUICK + ["model.base_channels=4", "gan.discriminator.base_channels=4"]),
          tmp_path / "gan")
    with pytest.raises(ConfigError, match="LoRA fine-tuning trains families with one optimizer step"):
        train(finetune_config(tmp_path / "gan", targets="all", overrides=["train.images=16"]), tmp_path / "gan-lora")
