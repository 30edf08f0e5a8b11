"""The Pix2Pix family (Isola et al. 2017): image-to-image translation as the GAN family's two
phases, with a U-Net generator G(cond) that reads the input image ``cond["image"]`` instead of z,
a PatchGAN discriminator D(x, cond) and the L1 term (``gan.l1_weight``). Trained on pairs such as
``edges:mnist`` (Sobel edge map -> digit); the ``gan`` section configures it.

    >>> pipe = genmodels.load("runs/pix2pix")
    >>> digits = pipe.translate(edge_maps)          # [N, C, H, W] in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from ..build import fill_option
from ..errors import ConfigError, GenmodelsError
from ..images import save_grid, write_samples
from .base import LoadedRun, register
from .gan import GANFamily, GANPipeline, _refuse, fill_data_options, make_objective, recalibrate_batchnorm
from .loading import load


def recalibration_inputs(cond_images, device, *, batches=8, batch_size=256):
    """Fixed inputs for the batch-norm recalibration: the first training inputs."""
    n = min(len(cond_images), batches * batch_size)
    return [({"image": cond_images[i:i + batch_size].to(device)},) for i in range(0, n, batch_size)]


class Pix2PixFamily(GANFamily):
    name = "pix2pix"
    sample_options = ()

    def network_options(self, cfg, dataset) -> dict:
        if "image" not in dataset.cond:
            raise ConfigError(f"Pix2Pix needs paired data such as edges:mnist (an input image per item), "
                              f"not '{cfg.data.name}'")
        if cfg.model.network != "unet" or cfg.gan.discriminator.get("network") != "patch":
            raise ConfigError("Pix2Pix pairs model.network=unet with gan.discriminator.network=patch")
        g, d_kind, d = fill_data_options(cfg, dataset.shape)
        inputs = dataset.cond["image"].shape[1]
        fill_option(g, "in_channels", inputs, source=f"dataset '{cfg.data.name}'")
        fill_option(d, "cond_channels", inputs, source=f"dataset '{cfg.data.name}'", where="gan.discriminator")
        cfg.gan.discriminator = {"network": d_kind, **d}
        return g

    def objective(self, cfg, G, D):
        return make_objective(cfg, G, D, takes_z=False)

    def _evaluate(self, ctx, ema):
        return None  # its samples are translations of given inputs: judged by translate's L1, not fd_cnn

    def _preview(self, ctx, ema):
        cond, x = ctx.dataset.cond["image"][:8], ctx.dataset.x[:8]
        inputs = recalibration_inputs(ctx.dataset.cond["image"], ctx.device)

        def preview(png_path):  # rows: input, output, target
            recalibrate_batchnorm(ema.module, inputs)
            with torch.no_grad():
                out = ema.module({"image": cond.to(ctx.device)}).cpu()
            save_grid(torch.cat([cond.cpu(), out, x.cpu()]), png_path, nrow=8, scale=2)
        return preview

    def load(self, run: LoadedRun) -> Pix2PixPipeline:
        from ..data import load_dataset

        cfg = run.config
        train = load_dataset(cfg.data.name, split="train", image_size=cfg.data.image_size, channels=cfg.data.channels)
        recalibrate_batchnorm(run.modules["G"], recalibration_inputs(train.cond["image"], run.device))
        return Pix2PixPipeline(run.run_dir, cfg, run.modules["G"], run.data_shape, run.class_names, run.device)

    def verbs(self) -> list:
        return [translate]


class Pix2PixPipeline(GANPipeline):
    """A trained Pix2Pix: ``translate`` input images; ``sample(n)`` translates the test split's
    first n inputs (what the evaluation protocol scores)."""

    family_name = "Pix2Pix translator"

    def sample_settings(self, **diffusion) -> dict:
        _refuse(diffusion)
        return {}

    @torch.inference_mode()
    def translate(self, images, *, batch_size=64) -> torch.Tensor:
        """G(input) for input images [N, C, H, W] in [-1, 1] (e.g. edge maps)."""
        x = torch.as_tensor(images, dtype=torch.float32)
        want = (self.net.in_channels, self.net.image_size, self.net.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ConfigError(f"input images have shape {tuple(x.shape[1:])}; this model takes {want}")
        outs = [self.net({"image": x[i:i + batch_size].to(self.device)}).float().cpu()
                for i in range(0, len(x), batch_size)]
        return torch.cat(outs).clamp(-1, 1)

    def sample(self, n=64, *, seed=0, labels=None, cond=None, batch_size=64, progress=False, dist=None,
               **diffusion) -> torch.Tensor:
        """Translations of ``cond["image"]`` (n inputs, or one for all), or of the test split's
        first n inputs; the seed does not matter (the translator's dropout is off at sampling)."""
        _refuse(diffusion)
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if labels is not None:
            raise ConfigError("a Pix2Pix run translates images; it takes no class labels")
        if cond:
            if set(cond) != {"image"}:
                raise ConfigError(f"a Pix2Pix run reads only cond['image'] (its inputs); got {sorted(cond)}")
            images = torch.as_tensor(cond["image"])
            if len(images) not in (1, n):
                raise ConfigError(f"cond['image'] needs {n} input images (one per sample) or 1, got {len(images)}")
            return self.translate(images.expand(n, *images.shape[1:]), batch_size=batch_size)
        from ..data import load_dataset

        data = self.config.data
        test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
        index = torch.arange(n) % len(test)
        return self.translate(test.cond["image"][index], batch_size=batch_size)


@click.command(help="Image-to-image (Pix2Pix runs): translate an input image, e.g. an edge map, into the "
                    "target domain; with --edges the input is a picture whose Sobel edges are translated."
                    "\n\n\b\nExample:\n  genmodels translate runs/pix2pix --input edges.png --out digit.png\n"
                    "  genmodels translate runs/pix2pix --input digit.png --edges --out redrawn.png")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_", required=True, type=click.Path(path_type=Path),
              help="An image file, a folder of images or an .npz (uint8 [N, H, W, C]).")
@click.option("--edges", is_flag=True, help="Take the Sobel edge map of the input first (as edges:SET builds).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="translated.png", show_default=True,
              help="grid.png (rows: input, output), .npz or a directory/.")
def translate(run_dir, input_, edges, device, out):
    from ..data.datasets import sobel_edges
    from ..data.folder import read_image
    from ..images import load_image_set

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, Pix2PixPipeline):
        raise GenmodelsError(f"'{run_dir}' is a {pipe.config.family} run; translate needs a Pix2Pix run "
                             "(config edges2mnist-pix2pix)")
    channels, size = pipe.data_shape[0], pipe.data_shape[1]
    if input_.is_file() and input_.suffix != ".npz":
        pixels = torch.from_numpy(read_image(input_, image_size=size, channels=channels).copy())
        x = pixels.reshape(size, size, channels).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    else:
        x = load_image_set(input_)
    if edges:
        x = sobel_edges(x)
    y = pipe.translate(x)
    if out.endswith(".png"):
        save_grid(torch.cat([x, y]), out, nrow=len(x), scale=2)
        click.echo(f"{len(x)} image(s) translated; rows input / output in {out}")
    else:
        click.echo(write_samples(y, out))


register(Pix2PixFamily())
