"""Editing, restoration and anomaly detection with any trained diffusion, flow, latent or text
model: masks, inpainting (RePaint or a trained inpainting model), outpainting, img2img (SDEdit),
inversion edits, restoration as inverse problems (DDRM, DPS), anomaly scores.

Every tool takes a loaded pipeline (``genmodels.load``) and images in [-1, 1], NCHW; the CLI
verbs (``genmodels inpaint``, ``outpaint``, ``img2img``, ``edit``, ``restore``, ``anomaly``)
record their parameters in each output PNG (``genmodels.images.read_parameters``).
"""
