"""Every benchmark behind ``lmfix bench``: ``head`` (output layer time and memory), ``train`` (training
tokens/s against plain PyTorch) and ``embeddings`` (build time and peak memory of each method).
"""
