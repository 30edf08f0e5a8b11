"""The diffusion family (every path and parameterization: DDPM, VP, flow matching) and the
noise-aware classifier that guides it: one net, one denoising phase, one EMA."""

from .. import build
from ..errors import ConfigError
from ..images import save_grid, scatter_plot
from . import LoadedRun, TrainContext, TrainParts, register
from ..train.trainer import Phase


class DiffusionFamily:
    name = "diffusion"
    frozen_sections = ("diffusion",)

    def parts(self, cfg):
        return build.diffusion_parts(cfg, cfg.model.options)

    def build(self, cfg, options: dict) -> dict:
        self.parts(cfg)  # a bad diffusion section fails before any weights are drawn
        return {"net": build.build_network(cfg.model.network, **options)}

    def training(self, ctx: TrainContext) -> TrainParts:
        cfg, t = ctx.cfg, ctx.cfg.train
        path, param, objective = self.parts(cfg)
        net = ctx.modules["net"]
        train_net = ctx.wrap(net)
        # labels feed the net only when it was built class-conditional; "noise": reflow pairs
        keys = ("x", "noise", "y") if cfg.model.options.get("num_classes") is not None else ("x", "noise")

        def loss(batch, generator):
            on_device = ctx.to_device(batch, [k for k in keys if k in batch])
            with ctx.autocast_context():
                return objective(train_net, on_device, generator=generator)

        phase = Phase("denoiser", train_net, loss, ctx.adamw(net.parameters()), t.grad_clip)
        ema = ctx.ema("net")
        if param is None:  # a classifier draws nothing
            return TrainParts([phase], {"net": ema})
        return TrainParts([phase], {"net": ema}, preview=self._preview(ctx, ema, path, param),
                          evaluate=self._evaluate(ctx, ema, path, param))

    @staticmethod
    def _draw(ctx, ema, path, param):
        """draw(seeds, labels) -> samples from the current EMA weights with the preview's sampler."""
        from ..pipeline import generate

        s = ctx.cfg.sample
        return lambda seeds, labels=None: generate(
            build.make_denoiser(ema.module, path, param), path, shape=ctx.dataset.shape, seeds=seeds,
            sampler=s.sampler, steps=min(s.steps, 25), eta=s.eta, labels=labels, device=ctx.device)

    def _preview(self, ctx, ema, path, param):
        draw, dataset = self._draw(ctx, ema, path, param), ctx.dataset

        def preview(png_path):
            if dataset.kind == "image":
                save_grid(draw(range(16)).clamp(-1, 1), png_path, nrow=8, scale=2)
            else:
                scatter_plot(draw(range(2000)), png_path, reference=dataset.x[:2000].cpu())

        return preview

    def _evaluate(self, ctx, ema, path, param):
        if not (ctx.cfg.train.eval_every_images and ctx.dist.is_main):
            return None
        from ..metrics.protocol import proxy_evaluator

        return proxy_evaluator(ctx.cfg, ctx.dataset, self._draw(ctx, ema, path, param), n=ctx.cfg.train.eval_n)

    def load(self, run: LoadedRun):
        from ..pipeline import Pipeline

        path, param, _ = self.parts(run.config)
        return Pipeline(run.run_dir, run.config, run.modules["net"], path, param, run.data_shape,
                        run.class_names, run.device)


class ClassifierFamily(DiffusionFamily):
    """A noise-aware classifier (for classifier guidance) on the diffusion path's noise levels."""

    name = "classifier"

    def parts(self, cfg):
        return build.classifier_parts(cfg)

    def load(self, run: LoadedRun):
        raise ConfigError(f"'{run.run_dir}' holds a classifier run, not a diffusion; load it with "
                          "genmodels.load_classifier / --classifier")


register(DiffusionFamily())
register(ClassifierFamily())
