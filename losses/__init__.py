"""Pure tensor math of the dot-similarity loss family (no Ray, no config files)."""

from losses.similarity import (
    NORMS,
    SCOPES,
    SIMILARITIES,
    resolve_similarity,
    similarity_loss,
    similarity_losses,
    validate,
)

__all__ = [
    "NORMS",
    "SCOPES",
    "SIMILARITIES",
    "resolve_similarity",
    "similarity_loss",
    "similarity_losses",
    "validate",
]
