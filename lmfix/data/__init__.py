"""The data stage: where text comes from and how it is checked (``sources``), vocabularies, tokenizers,
the prepared-id cache (``corpus``) and BPTT batching. A new corpus is a manifest in ``corpora/``.

Import the modules directly (``from lmfix.data.corpus import load``); only ``batching`` imports torch
(the others load it when a tensor is asked for), so ``lmfix prepare`` starts fast.
"""
