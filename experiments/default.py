"""Every config field, with the paper's Wave-U-Net (M4) as the values.

Other experiments import `get_config` from here and override; a field that is not
here does not exist. Inspect a config with

  python -m waveunet_jax.summary --config=experiments/default.py

The network is `waveunet_jax.models.WaveUNet(**config.model)`. Re-running training in
a workdir may change only the fields in `waveunet_jax.workdir.MAY_CHANGE_ON_RESUME`
(step counts, intervals, data.data_dir); other changes are refused.
"""

import ml_collections
from ml_collections import config_dict

LEVELS = 12


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  # Names of the separated sources, in output order. With difference output the last
  # one is the mix minus the others (the paper's voice task: vocals last).
  config.model.sources = ("accompaniment", "vocals")
  # Audio channels of the mix and of every source: 1 mono, 2 stereo.
  config.model.num_channels = 2
  # Features of each level's conv, shallowest first; its length is the number of levels.
  config.model.features = tuple(24 * (i + 1) for i in range(LEVELS))
  # Features of the bottleneck conv between the down and up paths.
  config.model.bottleneck_features = 24 * (LEVELS + 1)
  # Kernel size of each level's conv on the way down (odd).
  config.model.down_kernel_sizes = (15,) * LEVELS
  # Kernel size of each level's conv on the way up (odd).
  config.model.up_kernel_sizes = (5,) * LEVELS
  # Kernel size of the bottleneck conv (odd).
  config.model.bottleneck_kernel_size = 15
  # Kernel size of the output conv that maps features to each source (odd).
  config.model.output_kernel_size = 1
  # How each level reduces time after its skip: 'decimate' (keep every f-th sample)
  # or 'maxpool' (max over windows of f).
  config.model.downsampling = "decimate"
  # Downsampling factor of each level; 1 means none. Upsampling mirrors it.
  config.model.downsampling_factors = (2,) * LEVELS
  # 'linear' interpolation or 'learned' (paper M5: a learned weight per inserted sample).
  config.model.upsampling = "linear"
  # 'valid': unpadded convs, input longer than output (the paper's context model);
  # 'same': output length == input length, a multiple of the total downsampling.
  config.model.padding = "valid"
  # 'none' (convs with biases) or 'batchnorm' (convs without biases, then BatchNorm).
  config.model.normalization = "none"
  # BatchNorm running-average momentum (0.99 keeps 99 % of the old statistic).
  config.model.batchnorm_momentum = 0.99
  # 'direct': one tanh output per source; 'difference': the last source is
  # mix - sum(others), so the sources always add up to the mix.
  config.model.output = "difference"
  # Slope of LeakyReLU for negative inputs.
  config.model.negative_slope = 0.2
  # Compute dtype: 'float32', or 'bfloat16' on TPU/GPU (parameters stay float32).
  config.model.dtype = "float32"

  config.data = ml_collections.ConfigDict()
  # Sample rate (Hz) the model works at; audio is resampled to it.
  config.data.sample_rate = 22050
  # Wanted output samples per training example; models.lengths() turns it into the
  # exact input and output lengths of the network.
  config.data.output_length = 16384
  # TFDS data dir written by `python -m waveunet_jax.prepare`; unset (None): train on
  # a synthetic corpus made under the workdir. (Placeholders are None fields that
  # command-line overrides can still set.) Several prepared datasets, each a share of
  # the training crops: 'DIR:WEIGHT,DIR:WEIGHT,...', e.g. '/data/musdb:0.7,/data/mine:0.3'
  # (weights are normalised; a weight left out is 1). All must be prepared with this
  # config. Validation logs each as valid/<name>/... (<name>: the last folder names
  # that tell the datasets apart, e.g. musdb_tfds) and their weight-averaged loss and
  # SDR as valid/loss and valid/sdr/*, which early stopping and best/ follow.
  config.data.data_dir = config_dict.placeholder(str)
  # Augmentations of the training sources, applied in order (names from
  # data.tfdata.AUGMENTATIONS and data.device.AUGMENTATIONS, the same in both
  # samplers: 'gain', 'channel_swap', 'remix', 'polarity': each source of each example
  # negated with probability 1/2); the mix is always the sum of the augmented sources.
  # The paper used 'gain' alone. Pitch and tempo changes are left out: each resamples
  # a whole crop at a random ratio, which changes its length (a crop read longer or
  # shorter, then resampled to the network's input) and costs a resampler per example.
  config.data.augmentations = ("gain",)
  # 'gain': each source scaled by a factor drawn from U[low, high].
  config.data.gain_range = (0.7, 1.0)
  # 'remix': chance that a source is taken from another example of the batch.
  config.data.remix_probability = 0.5
  # Where training batches are made. 'device': the prepared windows are read once and
  # held by the accelerators as int16, each device its share, and every batch is
  # cropped, augmented and mixed there by a jitted function of (seed, step, device)
  # (`data.device`): no input pipeline limits a GPU or TPU, and a resumed run draws
  # exactly the batches it would have drawn. 'tfdata': tf.data reads, crops and augments
  # on the host CPU (`data.tfdata`; the settings below are its), its positions saved
  # with each checkpoint. 'auto' (the default): 'device' when each device's share fits
  # beside the compiled train step in 80 % of its memory (on a CPU: the machine's memory
  # over its devices), else 'tfdata'; the log says which and why.
  config.data.pipeline = "auto"
  # Random crops taken from each decoded window before shuffling.
  config.data.crops_per_window = 8
  # Shuffle buffers: windows read from the files, then crops (memory: crops x input).
  config.data.window_shuffle_buffer = 16
  config.data.crop_shuffle_buffer = 128
  # Built-in default when data_dir is unset: a synthetic corpus of this many training
  # tracks (plus one test track; the first training track validates) of this length.
  config.data.synthetic_tracks = 8
  config.data.synthetic_seconds = 30.0

  config.optim = ml_collections.ConfigDict()
  # Peak learning rate of the main stage (the paper's Adam: 1e-4).
  config.optim.learning_rate = 1e-4
  # 'constant', or 'warmup_cosine' (linear warm-up, then cosine decay to 0 at
  # num_train_steps).
  config.optim.schedule = "constant"
  # Warm-up steps of 'warmup_cosine'.
  config.optim.warmup_steps = 1000
  # Adam's moment decays and epsilon.
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  # AMSGrad instead of Adam (the seed's shallow network trained with it).
  config.optim.amsgrad = False
  # L2 with Keras semantics, loss += weight_decay * sum(w^2), on the parameters whose
  # path ('down_0/conv/kernel', ...) fully matches l2_mask; 0 turns it off.
  config.optim.weight_decay = 0.0
  config.optim.l2_mask = r"(down_\d+|up_\d+|bottleneck)/conv/kernel"
  # Clip gradients to this global norm; None: no clipping.
  config.optim.grad_clip_norm = config_dict.placeholder(float)
  # Only the parameters whose path fully matches this regex train, the others stay
  # exactly as they are (no update, no weight decay); None: all train. With init_from:
  # 'output/.*' the output layer alone, r'(up_\d+|upsample_\d+|output)/.*' the up path
  # and the output layer. BatchNorm statistics are no parameters: they follow the data
  # in every layer.
  config.optim.trainable = config_dict.placeholder(str)
  # Keep an exponential moving average of the parameters, updated after every optimiser
  # step: ema = d * ema + (1 - d) * params, from the stage's first parameters, with d
  # warmed up as min(d, (1 + step) / (10 + step)) (optim.ema_decay_at); 0: none (the
  # paper's), e.g. 0.999. The average is what validation, best/, separation,
  # evaluation, export and init_from use; it is saved with each checkpoint, and the
  # fine-tune stage starts from the best average (the parameters best/ chose) as both
  # its parameters and its average. BatchNorm's running statistics stay the trained
  # network's, as they are (not averaged, nor recomputed for the average).
  config.optim.ema_decay = 0.0

  config.loss = ml_collections.ConfigDict()
  # The training loss is scale * (kind + stft_weight * STFT) over the output samples
  # (steps.Loss). Validation (valid/loss, which early stopping and best/ follow) is
  # always scale * MSE, whatever trains, so that it compares across runs.
  config.loss.scale = 1.0
  # Only the central this-many output samples count, in every term (the seed's context
  # for same padding); None: all of them.
  config.loss.central_length = config_dict.placeholder(int)
  # 'mse' (the paper's) or 'l1': the mean squared or absolute error over every sample
  # of every source.
  config.loss.kind = "mse"
  # Weight of a multi-resolution STFT term added to `kind` (Parallel WaveGAN's, Demucs's
  # auxiliary loss: spectral convergence + L1 of log magnitudes, averaged over the FFT
  # sizes); 0: none, the paper's.
  config.loss.stft_weight = 0.0
  # The STFT term's FFT sizes (periodic Hann windows as long, hops of a quarter, only
  # frames wholly inside the samples the loss sees). A size longer than those samples
  # is refused at start-up, naming this field.
  config.loss.stft_fft_sizes = (512, 1024, 2048)

  config.fine_tune = ml_collections.ConfigDict()
  # The paper's second stage, from the best parameters of the first, once the first
  # has stopped improving: with its own global batch size and learning rate.
  config.fine_tune.enabled = True
  config.fine_tune.batch_size = 32
  config.fine_tune.learning_rate = 1e-5

  config.separation = ml_collections.ConfigDict()
  # The source that receives what the others miss when separating at another rate than
  # the model's (the band above its Nyquist frequency): with difference output it is
  # the input minus the other sources, so the stems add up to the input at any rate.
  # None: 'accompaniment' if a source, else 'other', else the last source. It does not
  # change training; `separate --residual_source` overrides it.
  config.separation.residual_source = config_dict.placeholder(str)

  # Global batch size of the main stage (all devices and hosts together).
  config.batch_size = 16
  # Upper bound on optimiser steps over both stages; early stopping usually ends sooner.
  config.num_train_steps = 2_000_000
  # Validate every this many steps (the paper's "epoch" of 2000 steps).
  config.eval_every_steps = 2000
  # A stage ends after this many validations without a lower validation loss.
  config.patience = 20
  # Log training metrics (and check the loss is finite) every this many steps.
  config.log_every_steps = 100
  # Save a resumable checkpoint every this many steps; keep the newest this many.
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 2
  # Seeds parameter initialisation and the data pipeline.
  config.seed = 0
  # Start from another run's parameters (its average where it kept one, optim.ema_decay)
  # and BatchNorm statistics (fine-tuning), with a fresh optimiser at step 0: 'WORKDIR'
  # or 'WORKDIR:CHECKPOINT' (best, latest or a step; default best). The network must be
  # that run's, or differ only in its sources (the output layer then starts fresh). Used
  # only when the workdir has no checkpoint yet; config.json records the step it
  # started from.
  config.init_from = config_dict.placeholder(str)

  return config
