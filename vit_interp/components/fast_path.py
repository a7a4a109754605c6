"""When a fused kernel may stand in for an explicitly hooked computation.

Fused kernels (``F.layer_norm``, ``scaled_dot_product_attention``) never materialise the LayerNorm
scale or the attention scores and pattern. We use them unless a hook could observe the difference:
the explicit computation runs when a hook is attached, and its result is used when a hook *edited*
the activation (returned another tensor, changed it in place) or needs its gradient. A hook that
only reads leaves the fused result in place, so an identity hook gives bit-identical outputs.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules import module as torch_module
from transformer_lens.hook_points import HookPoint


def has_hooks(hook_point: HookPoint) -> bool:
    """Whether anything (TransformerLens or plain torch hooks) listens at this hook point."""
    return bool(
        hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
        or torch_module._global_forward_hooks
        or torch_module._global_backward_hooks
    )


def run_hook(hook_point: HookPoint, tensor: Tensor) -> tuple[Tensor, bool]:
    """Pass ``tensor`` through ``hook_point``; return the result and whether it must be used.

    The result must be used (``True``) if a hook replaced the tensor, edited it in place, or may
    need gradients through it (a backward hook).
    """
    version = tensor._version
    out = hook_point(tensor)
    edited = out is not tensor or tensor._version != version
    return out, edited or bool(hook_point._backward_hooks or torch_module._global_backward_hooks)
