"""Pure tensor math of the dot-similarity loss family (no Ray, no config files).

The variant names and their check (``losses.names``) load without torch, so the driver can
check a config cheaply; the loss functions load torch when first used.
"""

from losses.names import NORMS, SCOPES, SIMILARITIES, validate

_TENSOR_API = ("resolve_similarity", "similarity_loss", "similarity_losses")


def __getattr__(name: str):
    if name in _TENSOR_API:
        from losses import similarity

        return getattr(similarity, name)
    raise AttributeError(f"module 'losses' has no attribute {name!r}")


__all__ = ["NORMS", "SCOPES", "SIMILARITIES", "validate", *_TENSOR_API]
