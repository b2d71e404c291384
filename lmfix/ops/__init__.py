"""Fixed Hadamard classifier ops: layouts, the Walsh-Hadamard transform and the fused head loss."""

from lmfix.ops.dense_loss import dense_cross_entropy
from lmfix.ops.hadamard import LAYOUTS, HadamardLayout, make_layout
from lmfix.ops.hadamard_loss import hadamard_cross_entropy, hadamard_logits
from lmfix.ops.transform import fwht

__all__ = [
    "LAYOUTS", "HadamardLayout", "dense_cross_entropy", "fwht",
    "hadamard_cross_entropy", "hadamard_logits", "make_layout",
]
