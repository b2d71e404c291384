"""lmfix: language models whose tied embedding/classifier matrix is fixed, not learned."""

__version__ = "0.1.0"
