"""Editing, restoration and anomaly detection with any trained diffusion, flow, latent or text
model: masks, inpainting (RePaint or a trained inpainting model), outpainting, img2img (SDEdit),
inversion edits, restoration as inverse problems (DDRM, DPS), anomaly scores.

Every tool takes a loaded pipeline (``genmodels.load``) and images in [-1, 1], NCHW; the CLI
verbs (``genmodels inpaint``, ``outpaint``, ``img2img``, ``edit``, ``restore``, ``anomaly``)
record their parameters in each output PNG (``genmodels.images.read_parameters``).

    from genmodels.edit.inpaint import inpaint          # RePaint / the inpainting model
    from genmodels.edit.outpaint import outpaint
    from genmodels.edit.inversion import inversion_edit
    from genmodels.edit.restore import restore, degrade
    from genmodels.edit.anomaly import ...               # reconstruction and likelihood scores
    pipe.sample(n, init_images=x, strength=0.6)         # img2img / SDEdit

(Each tool lives in the module of its name; they are not re-exported here, where a function
``inpaint`` would be shadowed by the module ``inpaint`` once that is imported.)
"""

