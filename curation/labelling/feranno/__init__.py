"""FERAnno (SynFER): an expression labeller on a frozen diffusion model's features.

An image is VAE-encoded, DDIM-inverted to a small timestep, and passed once
through the UNet with a prompt naming every class; the decoder's multi-scale
feature maps and the cross-attention maps of the prompt's tokens feed a small
trainable network (``model.FERAnno``). Modules: ``inversion`` (DDIM up to t and
back), ``features`` (hooks), ``extract`` (images -> features), ``model``,
``calibration`` (temperature, ECE), ``config`` / ``data`` / ``cache`` /
``train`` (``build-dataset train-feranno``) and ``labeller`` (a trained model
as an image -> probabilities function). Importing this package loads no torch.
"""
