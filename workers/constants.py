"""Facts every part of dotsim shares, defined once: what a clip is, how its features are
computed by default, and the names of the splits and the features.

Plain values only (no imports), so the synthesizer, the feature code, the prepared-data
format and the driver can all read them cheaply.
"""

SAMPLE_RATE = 16_000  # Hz, as in Speech Commands v2
CLIP_SAMPLES = 16_000  # every clip is exactly 1 s (padded or trimmed)
N_MELS = 40  # mel bins of every feature
HOP = 160  # 10 ms: the mel hop and the number of new samples per LPC frame
N_FFT = 400  # 25 ms window
LPC_ORDER = 20  # LPC coefficients a_1..a_order per frame

SPLITS = ("train", "validation", "test")
FEATURES = ("speech", "formant", "residual")
