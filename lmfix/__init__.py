"""lmfix: language models whose tied embedding/classifier matrix is fixed, not learned.

Stages, each a package that imports only the ones before it: ``data`` -> ``embeddings`` -> ``model``
-> ``training`` -> ``analysis`` -> ``recipes`` -> ``cli``, with ``ops`` (kernels) below the model and
``bench`` beside analysis; ``errors`` and ``atomic`` (safe file writes) serve them all.
"""

__version__ = "0.1.0"
