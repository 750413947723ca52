"""Keyword Transformer encoder and cosine classifier. DDP-free: wrapping happens once,
in the training loop (``ray.train.torch.prepare_model``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeywordTransformer(nn.Module):
    """(B, frames, n_mels) spectrogram -> (B, emb_dim) embedding.

    A small convolutional stem reads local spectro-temporal patterns and merges
    ``frames_per_token`` frames into one token (a strided convolution over time); a class
    token is prepended and a pre-norm Transformer encoder reads the sequence; the class
    token's output, projected, is the embedding. One instance embeds speech, formant and
    residual.
    """

    def __init__(self, *, n_mels: int, frames: int, frames_per_token: int, d_model: int,
                 layers: int, heads: int, emb_dim: int, dropout: float):
        super().__init__()
        self.frames_per_token = frames_per_token
        tokens = -(-frames // frames_per_token)  # ceil: the last token is zero-padded
        self.pad = tokens * frames_per_token - frames
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv1d(d_model, d_model, kernel_size=frames_per_token, stride=frames_per_token),
        )
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=4 * d_model, dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        # enable_nested_tensor only helps padded batches; ours are dense
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = F.pad(x, (0, 0, 0, self.pad))  # (B, tokens * fpt, n_mels)
        x = self.stem(x.transpose(1, 2)).transpose(1, 2)  # (B, tokens, d_model)
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


class CosineClassifier(nn.Module):
    """logits = cos(emb, w_c) / temperature for each class c."""

    def __init__(self, emb_dim: int, classes: int, temperature: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, emb_dim) * emb_dim**-0.5)
        self.temperature = temperature

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(emb, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature


class KeywordModel(nn.Module):
    """The shared encoder and the classifier, as one module so DDP wraps both."""

    def __init__(self, *, classes: int, temperature: float, **encoder_sizes):
        super().__init__()
        self.encoder = KeywordTransformer(**encoder_sizes)
        self.classifier = CosineClassifier(encoder_sizes["emb_dim"], classes, temperature)

    def forward(self, speech, formant, residual):
        """Each (B, frames, n_mels) -> (emb, emb_formant, emb_residual, logits); one encoder
        pass over the three inputs stacked, (3B, frames, n_mels)."""
        emb, emb_formant, emb_residual = self.encoder(
            torch.cat([speech, formant, residual])
        ).chunk(3)
        return emb, emb_formant, emb_residual, self.classifier(emb)
