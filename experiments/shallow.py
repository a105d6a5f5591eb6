"""The seed project's shallow, wide Wave-U-Net (anleva/Wave-U-Net, wave_u_net_shallow.py).

  python -m waveunet_jax.summary --config=experiments/shallow.py

7 levels (48, 48, 144, 240, 336, 432, 528 features), conv(31) down and conv(15) up,
max pooling by 4 after every level but the first (4096 in all), BatchNorm without
conv biases, same padding, difference output (vocals = the conv output,
accompaniment = mix - vocals in the seed; here the sources are ordered so the
difference one is last). About 42.7 M parameters; 16 kHz stereo, training examples
of 16384 * 14 samples.
"""

import ml_collections

from experiments import default


def get_config() -> ml_collections.ConfigDict:
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
  return config
