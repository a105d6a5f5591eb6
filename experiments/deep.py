"""The paper's deep Wave-U-Net (Stoller, Ewert, Dixon 2018), its variants, and the
seed project's first network.

  python -m waveunet_jax.summary --config=experiments/deep.py        # M4
  python -m waveunet_jax.summary --config=experiments/deep.py:M5-HighSR
  python -m waveunet_jax.main --config=experiments/deep.py:seed --workdir=runs/seed

Variants (paper section 4): M1 same padding, direct output, mono; M2 as M1 with
difference output; M3 valid padding ("context"), mono; M4 as M3 in stereo (the
default); M5 as M4 with learned upsampling; M5-HighSR as M5 at 44.1 kHz; M6 as M4
with four sources (bass, drums, other, vocals). All but M5-HighSR work at 22050 Hz.
M4 takes 147443 input samples for 16389 output samples (about 6.7 s of context
for 0.74 s of output).

`:seed` is the seed project's first network (anleva/Wave-U-Net, wave_u_net.py, the
one it found hard to train): M4's layers (12 levels of 24, 48, ..., 288 features,
bottleneck 312, conv(15) down, conv(5) up, decimation, LeakyReLU(0.2), no
normalisation, difference output) with same padding, at 16 kHz stereo, with the
seed's training: L2 0.01 (Keras semantics) on every U-Net conv kernel, Adam at 1e-4
(Keras' default epsilon, no AMSGrad), 100 x MSE on the central 69,376 of 229,376
samples, batch 8. 10.26 M parameters, as M4. Its upsampling, Keras'
`UpSampling1D(2)` then `AveragePooling1D(2, strides=1, padding="same")`, is this
project's 'linear' upsampling in same padding after decimation, sample for sample
(see `seed_config`). Like the shallow config it needs an accelerator: a training
example costs 0.21 TFLOP (its forward pass 0.069 TFLOP; `flops.per_example`), three
times M4's, as its examples are longer. An output sample depends on input samples
up to 69,622 away (`models.context_reach`; receptive field 135,155), so no sample the
loss sees (80,000 or more from either end) depends on the zero padding.
"""

import ml_collections

from experiments import default

PAPER_VARIANTS = ("M1", "M2", "M3", "M4", "M5", "M5-HighSR", "M6")
VARIANTS = PAPER_VARIANTS + ("seed",)


def get_config(variant: str = "M4") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"--config=experiments/deep.py:{variant}: unknown variant; "
                     f"choose one of {', '.join(VARIANTS)}")
  if variant == "seed":
    return seed_config()
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


def seed_config() -> ml_collections.ConfigDict:
  """The seed's wave_u_net.py: the default (M4) network in same padding, trained as
  the seed trained it. Where the seed's Keras layers and this network differ only in
  form, the comments say why they compute the same thing."""
  config = default.get_config()
  model = config.model
  # The seed's Stem_0 (tanh conv) is the vocals, Stem_1 = mix - Stem_0 the
  # accompaniment: the difference source is last, as experiments/shallow.py orders it.
  model.sources = ("vocals", "accompaniment")
  # Kept from the default: features 24 * (i + 1), bottleneck 312, kernels 15 down, 5
  # up, 15 in the bottleneck and 1 out, biases, no normalisation, LeakyReLU(0.2),
  # difference output. The seed concatenates [upsampled, skip] and [features, mix];
  # this network [skip, upsampled] and [mix, features]: a fixed permutation of the
  # next conv's input rows (Glorot-initialised i.i.d. either way), so the same network.
  model.padding = "same"
  # MaxPooling1D(pool_size=1, strides=2, padding="same") keeps x[::2]: 'decimate'.
  model.downsampling = "decimate"
  model.downsampling_factors = (2,) * default.LEVELS
  # UpSampling1D(2) repeats each sample, AveragePooling1D(2, strides=1, padding="same")
  # averages each with its right neighbour. Keras' "same" pooling is TensorFlow's
  # SAME: the one padding sample goes at the end (SAME puts the odd one after), and
  # pools ignore padded values (tf.nn's "Notes on padding"), so the last output is the
  # last repeated sample alone. Output 2q is x[q], 2q + 1 is (x[q] + x[q + 1]) / 2, the
  # last one x[n - 1]: exactly 'linear' in same padding after decimation (models.Upsample
  # repeats the edge sample). Checked with tf.keras 3.15 on TensorFlow 2.21 (the
  # seed used Keras 2.2.0 on TF 1.12: the same tf.nn.avg_pool), and in
  # tests/test_models.py against a numpy model of the two Keras layers.
  model.upsampling = "linear"

  config.data.sample_rate = 16000
  config.data.output_length = 16384 * 14  # 229376 = 56 * 4096, as the seed's examples

  # Keras' Adam(lr=0.0001) of Keras 2.2.0 (the seed's requirements.txt): epsilon None,
  # i.e. K.epsilon() = 1e-7. (Keras adds it to sqrt(v) before the bias correction,
  # optax after: the same update up to the size of epsilon.)
  config.optim.learning_rate = 1e-4
  config.optim.amsgrad = False
  config.optim.eps = 1e-7
  # kernel_regularizer=l2(0.01) on every U-Net conv (down, bridge, up), none on the
  # output convs or biases: default.py's l2_mask.
  config.optim.weight_decay = 0.01
  # cropped_mean_squared_error: Cropping1D(80000) on both ends, 100 x MSE.
  config.loss.scale = 100.0
  config.loss.central_length = 16384 * 14 - 2 * 80000  # 69376
  # The seed trained it with batch 8 (its __main__ and settings.json), as the shallow
  # network; the fine-tune stage doubles it, as experiments/shallow.py.
  config.batch_size = 8
  config.fine_tune.batch_size = 16
  return config
