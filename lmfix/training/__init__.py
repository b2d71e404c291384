"""The training stage: ``config`` (every flag, saved as config.toml), ``setup`` (config -> corpus and model),
``trainer`` (the loop), ``checkpoint`` (run files), ``distributed`` (devices, torchrun) and ``rundir``.

Entry point: ``from lmfix.training.trainer import train``; ``config`` loads without torch.
"""
