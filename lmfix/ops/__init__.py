"""Kernels below the model: fused dense and Hadamard cross entropy, the Walsh-Hadamard transform,
Hadamard layouts, Triton kernels for CUDA and the CPU GEMM backend. Nothing here imports a stage above.
"""

from lmfix.ops.dense_loss import dense_cross_entropy
from lmfix.ops.hadamard import LAYOUTS, HadamardLayout, make_layout
from lmfix.ops.hadamard_loss import hadamard_cross_entropy, hadamard_logits
from lmfix.ops.transform import fwht

__all__ = [
    "LAYOUTS", "HadamardLayout", "dense_cross_entropy", "fwht",
    "hadamard_cross_entropy", "hadamard_logits", "make_layout",
]
