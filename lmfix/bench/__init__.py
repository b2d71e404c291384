"""Every benchmark behind ``lmfix bench``: ``head`` (output layer time and memory), ``train`` (training
tokens/s against plain PyTorch), ``embeddings`` (build time and peak memory of each method) and ``gpu``
(the whole GPU session: environment, CUDA tests, head and training benchmarks, in one command).
"""
