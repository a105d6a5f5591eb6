"""The seed project's shallow, wide Wave-U-Net (anleva/Wave-U-Net, wave_u_net_shallow.py).

  python -m waveunet_jax.main --config=experiments/shallow.py --workdir=runs/shallow
  python -m waveunet_jax.main --config=experiments/shallow.py:smoke --workdir=/tmp/smoke

`:smoke` is a narrow 7-level version on 1 s examples and a small synthetic corpus:
about a minute on 2 CPU cores, for checking that everything runs (its loss falls,
its separation is not useful). The full config needs an accelerator: a training
example costs 1.23 TFLOP (its forward pass 0.41 TFLOP, the backward twice that;
`flops.per_example`, against 1.24 TFLOP by XLA's CPU cost analysis of the train step).

7 levels (48, 48, 144, 240, 336, 432, 528 features), conv(31) down and conv(15) up,
max pooling by 4 after every level but the first (4096 in all), BatchNorm without
conv biases, same padding, difference output (vocals = the conv output,
accompaniment = mix - vocals in the seed; here the sources are ordered so the
difference one is last). About 42.7 M parameters; 16 kHz stereo, training examples
of 16384 * 14 samples.
"""

import ml_collections

from experiments import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "smoke"):
    raise ValueError(f"--config=experiments/shallow.py:{variant}: unknown variant; "
                     "use no argument or :smoke")
  config = default.get_config()
  model = config.model
  model.sources = ("vocals", "accompaniment")
  model.features = (48, 48, 144, 240, 336, 432, 528)
  model.bottleneck_features = 624
  model.down_kernel_sizes = (31,) * 7
  model.up_kernel_sizes = (15,) * 7
  model.bottleneck_kernel_size = 15
  model.downsampling = "maxpool"
  model.downsampling_factors = (1, 4, 4, 4, 4, 4, 4)
  model.padding = "same"
  model.normalization = "batchnorm"
  model.batchnorm_momentum = 0.99
  model.output = "difference"

  config.data.sample_rate = 16000
  config.data.output_length = 16384 * 14
  # The seed's training: AMSGrad, L2 0.01 on every U-Net conv kernel, 100 * MSE on a
  # central crop, batch 8. The crop keeps the samples whose whole receptive field
  # (131092 samples) lies inside the example: 229376 - 131092 + 1, rounded down to
  # a multiple of 4096.
  config.optim.amsgrad = True
  config.optim.weight_decay = 0.01
  config.loss.scale = 100.0
  config.loss.central_length = 98304
  config.batch_size = 8
  config.fine_tune.batch_size = 16

  if variant == "smoke":
    model.features = (8, 8, 16, 16, 24, 24, 32)
    model.bottleneck_features = 32
    config.data.output_length = 16384
    config.loss.central_length = 8192
    config.data.synthetic_tracks = 3
    config.data.synthetic_seconds = 12.0
    config.batch_size = 4
    config.fine_tune.batch_size = 8
    config.num_train_steps = 40
    config.log_every_steps = 10
    config.eval_every_steps = 20
    config.checkpoint_every_steps = 20
    config.patience = 2
  return config
