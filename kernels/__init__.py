"""ped_fast's Triton kernels (installed as ped_fast.kernels): private, no
policy, no validation. ped_fast/triton.py chooses layouts, block sizes and
grids and is the only caller."""
from .class_stats import finalize_kernel, partial_sums_kernel
from .integrate import integrate_kernel
from .pairwise_forces import displacement_kernel, pair_weights_kernel

__all__ = ["partial_sums_kernel", "finalize_kernel", "pair_weights_kernel", "displacement_kernel", "integrate_kernel"]
