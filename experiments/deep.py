"""The paper's deep Wave-U-Net (Stoller, Ewert, Dixon 2018) and its variants.

  python -m waveunet_jax.summary --config=experiments/deep.py        # M4
  python -m waveunet_jax.summary --config=experiments/deep.py:M5-HighSR

Variants (paper section 4): M1 same padding, direct output, mono; M2 as M1 with
difference output; M3 valid padding ("context"), mono; M4 as M3 in stereo (the
default); M5 as M4 with learned upsampling; M5-HighSR as M5 at 44.1 kHz; M6 as M4
with four sources (bass, drums, other, vocals). All but M5-HighSR work at 22050 Hz.
M4 takes 147443 input samples for 16389 output samples (about 6.7 s of context
for 0.74 s of output).
"""

import ml_collections

from experiments import default

VARIANTS = ("M1", "M2", "M3", "M4", "M5", "M5-HighSR", "M6")


def get_config(variant: str = "M4") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"--config=experiments/deep.py:{variant}: unknown variant; "
                     f"choose one of {', '.join(VARIANTS)}")
  config = default.get_config()
  model = config.model
  if variant in ("M1", "M2"):
    model.padding = "same"
  if variant == "M1":
    model.output = "direct"
  if variant in ("M1", "M2", "M3"):
    model.num_channels = 1
  if variant in ("M5", "M5-HighSR"):
    model.upsampling = "learned"
  if variant == "M5-HighSR":
    config.data.sample_rate = 44100
  if variant == "M6":
    model.sources = ("bass", "drums", "other", "vocals")
  return config
