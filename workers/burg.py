"""Burg's method for linear prediction, three ways (``workers.audio.lpc`` picks one).

All three give ``librosa.lpc``'s coefficients. Burg's recursion on whole error vectors
costs O(n) per frame and order; the fast recursion (K. Vos, "A Fast Implementation of
Burg's Method", 2013) makes one pass over each frame for its autocorrelation and then
needs only O(order) numbers per frame and order:

- ``burg_frames``: the fast recursion fused per frame, compiled by numba, on the CPU. One
  pass per frame keeps every intermediate in L1; it also returns the frame's residual,
  which the features need anyway. 3.5x faster than ``burg_batched`` on one CPU thread.
- ``burg_batched``: the same recursion as PyTorch operations along a batch of frames, for
  accelerators (and any device torch runs on).
- ``burg_direct``: the recursion on whole error vectors, as librosa runs it: the fallback
  for the few frames the fast recursion cannot resolve.

The fast recursion works on sums of products of the signal whose differences are the
(small) prediction errors, so it runs in float64 whatever the input; when even float64
is too short for a frame (a nearly noiseless one), it flags the frame for the direct
recursion.

At order m (1..p), with alpha = [a^(m-1), 0] and J the reversal of m + 1 entries,
Burg's reflection coefficient is k = -(alpha . J g) / (alpha . g), where g = Phi alpha
and Phi[i, j] = sum_{t=m}^{n-1} x[t-i] x[t-j] + x[t-m+i] x[t-m+j]: alpha . g = sum f^2 + b^2
and alpha . J g = 2 sum f b over Burg's window of forward and backward errors f, b. From
order m to m + 1, Phi loses the rank-2 term of its first and last window samples and
gains a row, the first row of the next Phi (r below), so g follows in O(m) per frame:
    g <- g + k J g - x_h (x_h . a) - x_t (x_t . a),   append r . a,
with x_h = x[m], ..., x[0] and x_t = x[n-1-m], ..., x[n-1].
"""

from __future__ import annotations

import numba
import numpy as np
import torch

# A frame whose Burg error energy has fallen below this fraction of its starting value is
# predicted exactly (silence, a constant, a pure tone): its remaining reflection
# coefficients are round-off, so they are set to 0 instead.
EXHAUSTED = 1e-13
# The fast recursion's rounding error, relative to Burg's final error energy, is about
# eps * |a|_1^2 * E_0 / E_order; above this (a nearly noiseless frame, e.g. a ringing
# filter in float audio) the frame is redone with the direct recursion.
ILL_CONDITIONED = 1e-8
_EPS64 = float(np.finfo(np.float64).eps)


def burg_frames(x: torch.Tensor, p: int, residual: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Fast Burg on (B, n) float32/float64 CPU frames, one frame at a time.

    Returns the (B, p + 1) float64 coefficients, the (B, n - p) residual of each frame's
    last n - p samples in x's dtype (None unless ``residual``) and the (B,) mask of the
    frames that need the direct recursion. Frames may be an overlapping view (``unfold``).
    """
    frames = x.detach().numpy()
    a = np.empty((len(frames), p + 1))
    e = np.empty((len(frames), frames.shape[1] - p if residual else 0), frames.dtype)
    inexact = np.empty(len(frames), np.bool_)
    _burg_kernel(frames, p, a, e, inexact, EXHAUSTED, ILL_CONDITIONED, _EPS64)
    return (torch.from_numpy(a), torch.from_numpy(e) if residual else None,
            torch.from_numpy(inexact))


# reassoc lets LLVM vectorise the sums; "numpy" errors make x / 0 a float, not a Python
# exception check on every division. Every index below is a loop counter into a slice:
# numba wraps negative indices, and that check on a computed index blocks SIMD.
_JIT = {"cache": True, "nogil": True, "fastmath": {"reassoc", "contract"},
        "error_model": "numpy"}


@numba.njit(**_JIT)
def _burg_kernel(x, p, a_out, e_out, inexact_out, exhausted, ill_conditioned, eps):
    n = x.shape[1]
    hop = e_out.shape[1]
    padded = np.zeros(n + p + 4)  # the frame in float64, zeros after it for _autocorrelation
    xd = padded[:n]
    c = np.empty(p + 4)  # autocorrelation (entries past p unused)
    head_rev = np.empty(p + 1)  # x[p], ..., x[0]: x_h of order m is head_rev[p - m:]
    r = np.empty(p + 1)  # Phi's next first row, reversed; order m reads r[p - m:]
    alpha, alpha_next = np.zeros(p + 1), np.zeros(p + 1)
    g, g_next = np.zeros(p + 2), np.zeros(p + 2)
    a_rev = np.empty(p + 1)
    for b in range(x.shape[0]):
        frame = x[b]
        for i in range(n):
            xd[i] = frame[i]
        _autocorrelation(padded, n, p, c)
        for j in range(p + 1):
            head_rev[j] = xd[p - j]
        r[0] = 0.0
        for j in range(1, p + 1):
            r[j] = 2.0 * c[p + 1 - j]
        alpha[:] = 0.0
        alpha_next[:] = 0.0
        alpha[0] = 1.0
        g[0] = 2.0 * c[0] - xd[0] * xd[0] - xd[n - 1] * xd[n - 1]
        g[1] = 2.0 * c[1]
        start = g[0]
        energy = start  # alpha . g, Burg's error energy at this order
        for m in range(1, p + 1):
            g_rev, alpha_rev = g[m::-1], alpha[m::-1]
            two_fb = 0.0
            for i in range(m + 1):
                two_fb += alpha[i] * g_rev[i]
            # -k; Burg's |k| <= 1 holds exactly, the clamp only guards round-off.
            minus_k = two_fb / energy if energy > start * exhausted else 0.0
            minus_k = min(max(minus_k, -1.0), 1.0)
            for i in range(m + 1):
                alpha_next[i] = alpha[i] - minus_k * alpha_rev[i]
                g_next[i] = g[i] - minus_k * g_rev[i]
            alpha, alpha_next = alpha_next, alpha
            g, g_next = g_next, g
            if m == p:
                break  # `energy` is the last order's, the smallest
            x_h, x_t, r_m = head_rev[p - m:], xd[n - 1 - m:], r[p - m:]
            # r loses the products of the first and last window samples.
            tail_rev = xd[n - m:][::-1]  # x[n-1], ..., x[n-m]
            r_new = r_m[1:]
            for i in range(m):
                r_new[i] -= xd[i] * x_h[0] + tail_rev[i] * x_t[0]
            dot_h = 0.0
            dot_t = 0.0
            dot_r = 0.0
            for i in range(m + 1):
                dot_h += x_h[i] * alpha[i]
                dot_t += x_t[i] * alpha[i]
                dot_r += r_m[i] * alpha[i]
            for i in range(m + 1):
                g[i] -= x_h[i] * dot_h + x_t[i] * dot_t
            g[m + 1] = dot_r
            # alpha . g after both updates, without another pass: Burg's E (1 - k^2)
            # less the two samples that left the window.
            energy = energy * (1.0 - minus_k * minus_k) - dot_h * dot_h - dot_t * dot_t
        abs_sum = 0.0
        for i in range(p + 1):
            a_out[b, i] = alpha[i]
            abs_sum += abs(alpha[i])
        inexact_out[b] = eps * abs_sum * abs_sum * start > ill_conditioned * energy and start > 0
        if hop:
            for j in range(p + 1):
                a_rev[j] = alpha[p - j]
            _residual(xd, a_rev, e_out[b])


@numba.njit(**_JIT)
def _autocorrelation(padded, n, p, c):
    """c[lag] = sum_i x[i] x[i + lag] for lag 0..p of the n-sample frame at the start of
    ``padded`` (zeros after it). Four lags per pass: each loaded sample serves four sums."""
    for lag in range(0, p + 1, 4):
        x0, x1, x2, x3 = padded[lag:], padded[lag + 1:], padded[lag + 2:], padded[lag + 3:]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for i in range(n - lag):
            v = padded[i]
            s0 += v * x0[i]
            s1 += v * x1[i]
            s2 += v * x2[i]
            s3 += v * x3[i]
        c[lag], c[lag + 1], c[lag + 2], c[lag + 3] = s0, s1, s2, s3


@numba.njit(**_JIT)
def _residual(xd, a_rev, e):
    """e[t] = sum_j a_rev[j] x[t + j], with a_rev = a reversed (a_rev[p] = a[0] = 1): the
    frame's last len(e) samples filtered by A(z). Four outputs per pass over the filter,
    four independent sums that the compiler packs into one vector."""
    hop = len(e)
    t = 0
    while t + 4 <= hop:
        window = xd[t:]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for j in range(len(a_rev)):
            coefficient = a_rev[j]
            s0 += coefficient * window[j]
            s1 += coefficient * window[j + 1]
            s2 += coefficient * window[j + 2]
            s3 += coefficient * window[j + 3]
        e[t], e[t + 1], e[t + 2], e[t + 3] = s0, s1, s2, s3
        t += 4
    for u in range(t, hop):
        window = xd[u:]
        total = 0.0
        for j in range(len(a_rev)):
            total += a_rev[j] * window[j]
        e[u] = total


def burg_batched(x: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast Burg on (B, n) float64 frames as batched PyTorch operations -> (B, p + 1)
    coefficients and the (B,) mask of frames that need the direct recursion.

    Vectors are stored (entries, B) so that every operation runs along the batch; the
    rows of x_h, x_t and r are right-aligned, so order m reads the slice [p - m:].
    """
    n = x.shape[-1]
    c = torch.stack([torch.linalg.vecdot(x[:, : n - lag], x[:, lag:])
                     for lag in range(p + 1)])  # (p+1, B)
    edges = torch.cat([x[:, : p + 1], x[:, n - 1 - p:]], dim=1).T.contiguous()
    head, tail = edges[: p + 1], edges[p + 1:]  # x[0..p], x[n-1-p..n-1]: (p+1, B)
    # w[0] = x_h, w[1] = x_t, w[2] = r (Phi's first row, reversed, starting as 2c).
    edge_rows = x.new_zeros(3, p + 1, x.shape[0])
    edge_rows[0] = head.flip(0)
    edge_rows[1] = tail
    edge_rows[2, 1:] = 2 * c[1:].flip(0)
    tail_reversed = tail.flip(0)  # x[n-1], x[n-2], ...

    state = x.new_zeros(2, p + 1, x.shape[0])  # [alpha, g], the first m + 1 entries in use
    state[0, 0] = 1
    state[1, 0] = 2 * c[0] - head[0].square() - tail[-1].square()
    state[1, 1] = 2 * c[1]
    start = state[1, 0].clone()
    floor = start * EXHAUSTED
    for m in range(1, p + 1):
        s = state[:, : m + 1]
        flipped = s.flip(1)
        two_fb = torch.linalg.vecdot(s[0], flipped[1], dim=0)
        energy = torch.linalg.vecdot(s[0], s[1], dim=0)
        minus_k = torch.where(energy > floor, two_fb / energy, 0).clamp_(-1, 1)
        s.addcmul_(flipped, minus_k, value=-1)  # alpha + k J alpha and g + k J g at once
        if m == p:
            break
        w = edge_rows[:, p - m:]
        w[2, 1:].addcmul_(head[:m], head[m], value=-1)
        w[2, 1:].addcmul_(tail_reversed[:m], tail[p - m], value=-1)
        dots = (w * s[0]).sum(1)  # (3, B): x_h . a, x_t . a, r . a
        s[1].addcmul_(w[0], dots[0], value=-1).addcmul_(w[1], dots[1], value=-1)
        state[1, m + 1] = dots[2]
    a = state[0]
    rounding = _EPS64 * a.abs().sum(0).square() * start
    return a.T, (rounding > ILL_CONDITIONED * energy) & (start > 0)


def burg_direct(x: torch.Tensor, p: int) -> torch.Tensor:
    """Burg's recursion on whole error vectors, as ``librosa.lpc`` runs it (Marple 1980):
    (B, n) float64 frames -> (B, p + 1). O(n) per frame and order: the fallback."""
    fwd, bwd = x[:, 1:], x[:, :-1]  # f_0[t+1] and b_0[t]
    den = (fwd.square() + bwd.square()).sum(-1)
    floor = den * EXHAUSTED
    a = x.new_zeros(x.shape[0], p + 1)
    a[:, 0] = 1
    for i in range(p):
        k = torch.where(den > floor, -2 * torch.linalg.vecdot(fwd, bwd) / den, 0)
        k = k.clamp_(-1, 1)[:, None]
        a[:, 1 : i + 2] += k * a[:, : i + 1].flip(-1)
        fwd, bwd = fwd + k * bwd, bwd + k * fwd
        den = (1 - k[:, 0].square()) * den - bwd[:, -1].square() - fwd[:, 0].square()
        fwd, bwd = fwd[:, 1:], bwd[:, :-1]
    return a
