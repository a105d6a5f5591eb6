"""The Separator: whole songs of any length, rate and channel count through a network
that only takes windows of one fixed shape. Imports neither JAX nor TensorFlow: the
network is behind an `Engine` (`jax_engine.JaxEngine` runs a Flax model,
`model_formats` an exported one; an engine's module builds separators on it, this one
never imports an engine); tiling, streaming, resampling, channels, the full band, stem
layouts and test-time averaging are shared by every engine.

  separator = jax_engine.separator_from_workdir("runs/m4")   # or Separator(engine)
  stems = separator.separate(audio, rate)                  # {source: [T, C]}
  separator = Separator(engine, shifts=4, flip=True)       # test-time averaging: 12 passes

How a song is cut: `Tiling`; the stream, channels and full band: `Separator`; test-time
averaging: `averaging_passes`. The program: `separate` (docs/separation.md).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from waveunet_jax import audio as audio_lib
from waveunet_jax import stems as stems_lib

RESAMPLING_QUALITY = "HQ"
# The input sample rates separation takes (Hz). Memory per block grows with the ratio
# of the rates, and no recording is made below 1 kHz or above 768 kHz: a header
# declaring such a rate is damaged (a 1 Hz header once made a song of hours out of a
# minute's samples, resampled in blocks of gigabytes).
MIN_RATE, MAX_RATE = 1000, 768000
# Frames a resampler gives per call at most: a block is cut into pieces so that
# upsampling by a large ratio (8 kHz to 768 kHz) never makes one huge block.
RESAMPLED_BLOCK_FRAMES = 1 << 16
DEFAULT = "default"  # residual_source: the config's, else stems.default_residual_source
# The most random shifts of test-time averaging: every pass holds a few windows of its
# own (about 65 MB with M4's default 30 s windows, measured; 3 passes a shift with flip),
# and Demucs used 10 in its paper, 5 giving about the same gain (its README).
MAX_SHIFTS = 20


class SeparationError(ValueError):
  """Audio that cannot be separated; the message names the file and says why."""


def check_rate(rate: int, name: str = "audio") -> None:
  """SeparationError naming `name` unless `rate` is in [MIN_RATE, MAX_RATE]."""
  if not MIN_RATE <= rate <= MAX_RATE:
    raise SeparationError(f"{name}: its header declares a sample rate of {rate} Hz, outside "
                          f"the {MIN_RATE} to {MAX_RATE} Hz of audio (a damaged header?); "
                          "rewrite the file at its true rate")


def check_averaging(shifts: int, seed: int = 0) -> None:
  """SeparationError naming --shifts or --seed unless `shifts` is a whole number in
  [0, MAX_SHIFTS] and `seed` one of at least 0."""
  if isinstance(shifts, bool) or not isinstance(shifts, (int, np.integer)) or not (
      0 <= shifts <= MAX_SHIFTS):
    raise SeparationError(f"--shifts={shifts}: use 0 (no test-time shifts) or a whole number "
                          f"of random shifts up to {MAX_SHIFTS}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise SeparationError(f"--seed={seed}: use a whole number, 0 or more")


@dataclasses.dataclass(frozen=True)
class Pass:
  """One pass of test-time averaging (see `averaging_passes`): the song delayed by
  `delay` samples at the model's rate, its channels reversed (`swap`), its polarity
  flipped (`negate`). `Pass()` is the plain separation."""

  delay: int = 0
  swap: bool = False
  negate: bool = False

  def flip(self, x: np.ndarray) -> np.ndarray:
    """The swap and the negation of `x` [..., C]; its own inverse, so it turns the
    input [n, C] into this pass's and its estimate [n, S, C] back."""
    if self.swap:
      x = x[..., ::-1]
    return -x if self.negate else x


def averaging_passes(shifts: int, flip: bool, seed: int, max_shift: int,
                     channels: int) -> list[Pass]:
  """The passes of test-time averaging: `shifts` random delays in [0, max_shift) drawn
  with `seed` (none: delay 0), each plain and, with `flip`, swapped (for more than one
  channel) and negated. [Pass()] for no averaging.

  Test-time averaging (Demucs's "shift trick"): the song goes through the network in
  several passes, each of a variant of it, and the estimates, each turned back, are
  averaged (`Separator._averaged_at_model_rate`):

  * `shifts` = N: N passes, each of the song delayed by a random number of samples at
    the model's rate, drawn uniformly from [0, `max_shift`) = [0, hop // 2): half of
    what a window keeps (15 s for M4's default 30 s windows), which moves the song
    against the network's downsampling grid (hop is a multiple of the total
    downsampling) and against the window cuts. As in Demucs the unshifted estimate is
    not among them: N shifts cost N passes (0, the default: one plain pass). The delays
    come from a generator seeded with `seed`, the same for every song: the same song
    and settings give the same samples. A delay moves the windows, not the audio (the
    song starts `delay` samples later in the zero-padded stream), so it adds at most
    one window to a pass.
  * `flip`: every pass also with the channels swapped (reversed) and with the polarity
    flipped, each undone on the estimate; for a mono model only the polarity: 3 (mono:
    2) times the passes.
  """
  check_averaging(shifts, seed)
  rng = np.random.default_rng(seed)
  delays = [int(d) for d in rng.integers(0, max(1, max_shift), shifts)] if shifts else [0]
  flips = [(False, False)]
  if flip:
    flips += [(True, False)] * (channels > 1) + [(False, True)]
  return [Pass(delay, swap, negate) for delay in delays for swap, negate in flips]


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How a song is cut into windows. All in samples at the model's rate.

  The network runs on windows of one shape, in batches of one size (the last window and
  batch zero-padded). Window k covers the song's output samples
  `[k * hop, (k + 1) * hop)`:

  * valid padding (the paper's models): each window's input is its output plus the real
    neighbouring audio as context; the song is zero-padded only at its start and end.
  * same padding (M1, M2, the shallow network): outputs near a window's edges lack
    context, so windows overlap by a margin and only the centre of each is kept.
  * in both, `hop` is a multiple of the total downsampling, so a song separated in one
    window or in many gives the same samples up to float rounding. Outputs past the hop
    are dropped, or with `overlap` cross-faded linearly with the next window's.

  Window k's network input is `padded[k * hop : k * hop + input_length]`, where
  `padded` is the song after `pad_left` zeros (and zeros after its end). Of the
  network's output for it, `[keep_start, keep_start + hop + overlap)` is kept: the
  first `overlap` samples fade in over the previous window's last `overlap`, which
  fade out. `hop` and `overlap` are multiples of the total downsampling.
  """

  input_length: int
  hop: int
  overlap: int
  keep_start: int
  pad_left: int

  @property
  def recomputed_share(self) -> float:
    """The share of the network's input samples that are not new output: context
    (and margins, and overlap) computed again for every window."""
    return 1.0 - self.hop / self.input_length


class Engine(Protocol):
  """A network's forward pass on windows of one fixed shape, and what the separator
  must know of it."""

  sources: tuple[str, ...]   # in output order
  num_channels: int          # of the mix and of every source
  sample_rate: int           # Hz
  output: str                # 'difference' (last source = mix - others) or 'direct'
  tiling: Tiling
  batch_size: int            # windows per forward call
  residual_source: str | None  # the config's choice, or None for the default rule

  def forward(self, windows: np.ndarray) -> Any:
    """[batch_size, input_length, num_channels] float32 -> the network's sources
    [batch_size, num_sources, output_length, num_channels], as any array that
    np.asarray converts (a JAX engine returns before the work is done)."""


class Separator:
  """Separates whole songs of any length, rate and (mono or stereo) channel count.

  Streaming: audio flows through as blocks (blocks -> channels -> resampler -> windows ->
  engine -> overlap-add -> resampler -> channels -> full band -> stem layout), so memory
  does not grow with the song. Resampling is band-limited and chunked (soxr HQ); the
  output has exactly the input's length.

  Channels: a mono input into a stereo model is duplicated and its sources averaged back
  to mono; a stereo input into a mono model is averaged and its sources duplicated back;
  any other mismatch is an error naming the file.

  Full band (`residual_source`): the network hears the song at its own rate (16 kHz for
  the shallow network, 22.05 kHz for the paper's), so every source it gives lacks the
  band above that rate's Nyquist frequency (and a mono model the stereo side). One
  source, the residual source, receives what the others miss, at the input's own rate
  and channels:

  * difference output: residual = input - sum(the other sources, resampled back), so
    the stems add up to the input to float precision at any rate;
  * direct output: residual += input - (the input as the network heard it, resampled
    back): the missing band and side signal, nothing else.

  It defaults to `stems.default_residual_source` (accompaniment for the voice task,
  `other` for four stems), or the config's `separation.residual_source`; None keeps
  every source band-limited, as the network gives it.

  Difference output: as in the paper, the network's difference source is clipped to
  [-1, 1] when separating (`clip_difference`); that clip changes nothing unless
  mix - sum(others) leaves the audio range. A residual source is formed after it, so
  the stems still add up to the input.

  Args:
    engine: the network (see `Engine`).
    residual_source: the source that gets what the others miss (the full band above);
      'default': the engine's configured choice or the default rule; None: none.
    clip_difference: clip a difference output's last source to [-1, 1].
    shifts: test-time averaging over this many random delays of the song (0: none).
    flip: test-time averaging over the song with its channels swapped and negated.
    seed: of the random delays.
  """

  def __init__(self, engine: Engine, *, residual_source: str | None = DEFAULT,
               clip_difference: bool = True, shifts: int = 0, flip: bool = False,
               seed: int = 0):
    check_averaging(shifts, seed)
    self.engine = engine
    if residual_source == DEFAULT:
      residual_source = (getattr(engine, "residual_source", None)
                         or stems_lib.default_residual_source(engine.sources))
    if residual_source is not None and residual_source not in engine.sources:
      raise SeparationError(f"residual source {residual_source!r} is not one of the model's "
                            f"sources ({', '.join(engine.sources)})")
    self.residual_source = residual_source
    self.clip_difference = clip_difference and engine.output == "difference"
    self.shifts, self.flip, self.seed = int(shifts), bool(flip), int(seed)
    self.passes = averaging_passes(self.shifts, self.flip, self.seed, self.max_shift,
                                   self.num_channels)

  @property
  def sources(self) -> tuple[str, ...]:
    return tuple(self.engine.sources)

  def identity(self) -> dict[str, Any]:
    """What its results depend on: the engine's model (where from, a hash of its
    parameters) and the separation settings. Evaluation records it beside scores; the
    averaging settings only where averaging is on, so that earlier scores of plain
    separation still count as this separator's."""
    averaging = {}
    if self.shifts:
      averaging.update(shifts=self.shifts, seed=self.seed)
    if self.flip:
      averaging.update(flip=True)
    return {**getattr(self.engine, "identity", {"engine": type(self.engine).__name__}),
            "residual_source": self.residual_source, "clip_difference": self.clip_difference,
            "tiling": dataclasses.asdict(self.tiling), **averaging}

  @property
  def sample_rate(self) -> int:
    return int(self.engine.sample_rate)

  @property
  def num_channels(self) -> int:
    """The model's channels; a song may have others (see the class docstring)."""
    return int(self.engine.num_channels)

  @property
  def tiling(self) -> Tiling:
    return self.engine.tiling

  @property
  def max_shift(self) -> int:
    """The random delays of `shifts` lie in [0, max_shift): half a window's kept output,
    at the model's rate."""
    return max(1, self.tiling.hop // 2)

  def stem_names(self, stems: Sequence[str] | None) -> tuple[str, ...]:
    """The names a stem layout gives (None: the model's sources); SeparationError for
    a name that cannot be formed."""
    if stems is None:
      return self.sources
    try:
      return stems_lib.check(stems, self.sources)
    except ValueError as e:
      raise SeparationError(f"stems: {e}") from None

  def check_channels(self, channels: int, name: str = "audio") -> None:
    """Raises SeparationError naming `name` if its channels do not fit the model."""
    c = self.engine.num_channels
    if not (channels == c or channels == 1 or (channels == 2 and c == 1)):
      raise SeparationError(
          f"{name}: has {channels} channels; the model takes {c} "
          f"({'mono' if c == 1 else 'stereo' if c == 2 else f'{c} channels'}) or mono")

  def separate(self, audio: np.ndarray, rate: int, *, stems: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
    """Separates a whole song held in memory.

    Args:
      audio: [T, C] or [T] float, at `rate` Hz.
      rate: its sample rate.
      stems: the stem layout (see `stems`); None: the model's sources.
    Returns:
      {stem: [T, C] float32} at `rate` (C = 1 for [T]).
    """
    names = self.stem_names(stems)
    audio = np.asarray(audio, np.float32)
    audio = audio[:, None] if audio.ndim == 1 else audio
    if audio.ndim != 2:
      raise SeparationError(f"audio must be [time, channels] or [time], got {audio.shape}")
    step = audio_lib.BLOCK_FRAMES
    blocks = (audio[i:i + step] for i in range(0, len(audio), step))
    out = list(self.separate_blocks(blocks, rate, audio.shape[1], stems=names))
    out = (np.concatenate(out) if out
           else np.zeros((0, len(names), audio.shape[1]), np.float32))
    return {name: out[:, i] for i, name in enumerate(names)}

  def separate_blocks(self, blocks: Iterable[np.ndarray], rate: int, channels: int, *,
                      name: str = "audio", stems: Sequence[str] | None = None
                      ) -> Iterator[np.ndarray]:
    """Streams a song: blocks [n, channels] at `rate` in, blocks [n', len(stems),
    channels] float32 at `rate` out, whose lengths add up to exactly the input's.
    Holds a few windows in memory, whatever the song's length."""
    names = self.stem_names(stems)
    self.check_channels(channels, name)
    check_rate(rate, name)
    e, sources = self.engine, self.sources
    residual = (None if self.residual_source is None
                else sources.index(self.residual_source))
    # What travels back from the model's rate: every source, but a residual formed by
    # difference; and the model's view of the mix, for a direct model's residual.
    carried = [i for i in range(len(sources))
               if not (i == residual and e.output == "difference")]
    with_mix = residual is not None and e.output == "direct"
    song = _SongLength()
    mix_at_input = _Fifo() if residual is not None else None
    x = _model_inputs(blocks, channels, e.num_channels, song, mix_at_input, rate, name)
    if rate != self.sample_rate:
      x = _resample(x, rate, self.sample_rate, e.num_channels)
    mix_at_model = _Fifo() if with_mix else None
    if mix_at_model is not None:
      x = mix_at_model.tee(x)
    y = (b[:, carried] for b in self._averaged_at_model_rate(x))
    if mix_at_model is not None:
      y = (np.concatenate([b, mix_at_model.pop(len(b))[:, None]], axis=1) for b in y)
    width = len(carried) + with_mix
    if rate != self.sample_rate:
      shape = (width, e.num_channels)
      y = (b.reshape(-1, *shape) for b in _resample(
          (b.reshape(len(b), -1) for b in y), self.sample_rate, rate, math.prod(shape)))
    y = (_to_channels(b, channels) for b in y)
    y = _exact_length(y, song, (width, channels))
    for block in y:
      if residual is not None:
        block = self._full_band(block, mix_at_input.pop(len(block)), carried, residual)
      yield stems_lib.combine_stacked(block, sources, names)

  def _full_band(self, block: np.ndarray, mix: np.ndarray, carried: list[int],
                 residual: int) -> np.ndarray:
    """[n, carried (+ the model's mix), C] at the input's rate -> [n, S, C] with the
    residual source completed from the input `mix` [n, C]."""
    out = np.empty((len(block), len(self.sources), block.shape[2]), np.float32)
    out[:, carried] = block[:, :len(carried)]
    if self.engine.output == "difference":
      out[:, residual] = mix - out[:, carried].sum(axis=1)
    else:
      out[:, residual] += mix - block[:, -1]
    return out

  def _averaged_at_model_rate(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """[n, C] blocks -> [n, S, C] blocks of exactly the same total length: the average of
    the passes' estimates (one pass: its own), the passes side by side.

    The passes run over the one stream of the song at the model's rate (it is resampled
    once), each holding a few windows of its own, so memory grows with the number of
    passes (`MAX_SHIFTS` bounds it), never with the song. Their estimates are averaged
    at the model's rate, before anything goes back to the input's rate: the full band
    and the residual source then work on the average as on a single estimate, and the
    stems still add up to the input. For an engine that is linear in its input (shift-,
    swap- and sign-equivariant) the average is the plain estimate."""
    passes = self.passes
    inputs = itertools.tee(blocks, len(passes)) if len(passes) > 1 else (blocks,)
    streams = [self._pass(x, p) for x, p in zip(inputs, passes)]
    return streams[0] if len(streams) == 1 else _average(streams)

  def _pass(self, blocks: Iterable[np.ndarray], p: Pass) -> Iterator[np.ndarray]:
    """One pass's estimates of the song, turned back (`Pass.flip`) and in its time."""
    if p.swap or p.negate:
      blocks = (p.flip(b) for b in blocks)
      return (p.flip(y) for y in self._separate_at_model_rate(blocks, p.delay))
    return self._separate_at_model_rate(blocks, p.delay)

  def _separate_at_model_rate(self, blocks: Iterable[np.ndarray], delay: int = 0
                              ) -> Iterator[np.ndarray]:
    """[n, C] blocks -> [n, S, C] blocks of exactly the same total length; with `delay`,
    the windows see the song `delay` samples later (its zero padding before it longer)."""
    t = self.tiling
    song = _SongLength()
    weights = np.ones((t.hop + t.overlap, 1, 1), np.float32)
    if t.overlap:
      fade_in = ((np.arange(t.overlap) + 0.5) / t.overlap).astype(np.float32)[:, None, None]
      weights[:t.overlap], weights[t.hop:] = fade_in, 1 - fade_in
    tail, position = None, -t.overlap - delay  # song sample of the next kept output
    for kept in self._forward_windows(self._windows(blocks, song, delay)):
      if t.overlap:
        kept = kept * weights
        if tail is not None:
          kept[:t.overlap] += tail
        tail = kept[t.hop:]
      # Before the input ends no window reaches past it; after, trim at the song's end.
      start = max(0, -position)
      end = min(t.hop, song.frames - position) if song.done else t.hop
      if end > start:
        yield kept[start:end]
      position += t.hop

  def _windows(self, blocks: Iterable[np.ndarray], song: _SongLength, delay: int = 0
               ) -> Iterator[np.ndarray]:
    """The network inputs [I, C], in order: `delay` zeros more than the tiling pads,
    real audio as long as it lasts, then zeros until the kept outputs reach the song's
    end. Counts the song into `song`."""
    t = self.tiling
    buffer = np.zeros((t.pad_left + delay, self.engine.num_channels), np.float32)
    pending, pending_frames, count = [], 0, 0
    for block in blocks:
      song.frames += len(block)
      # Blocks wait in a list until a window is full: joining each one to the buffer
      # as it came copied the whole window once per block.
      pending.append(block)
      pending_frames += len(block)
      if len(buffer) + pending_frames < t.input_length:
        continue
      buffer, pending, pending_frames = np.concatenate([buffer, *pending]), [], 0
      while len(buffer) >= t.input_length:
        yield buffer[:t.input_length]
        buffer, count = buffer[t.hop:], count + 1
    buffer = np.concatenate([buffer, *pending])
    song.done = True
    needed = -(-(song.frames + delay + t.overlap) // t.hop) if song.frames else 0
    for _ in range(count, needed):
      buffer = np.pad(buffer, ((0, max(0, t.input_length - len(buffer))), (0, 0)))
      yield buffer[:t.input_length]
      buffer = buffer[t.hop:]

  def _forward_windows(self, windows: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Kept outputs [hop + overlap, S, C] per window. One batch computes while the next
    is read and the previous written (the JAX engine returns before it is done)."""
    t = self.tiling
    kept = slice(t.keep_start, t.keep_start + t.hop + t.overlap)
    clip = len(self.sources) - 1 if self.clip_difference else None
    in_flight = None
    for batch, count in _batches(windows, self.engine.batch_size):
      result = (self.engine.forward(batch), count)
      if in_flight is not None:
        yield from _unbatch(*in_flight, kept, clip)
      in_flight = result
    if in_flight is not None:
      yield from _unbatch(*in_flight, kept, clip)


class _SongLength:
  """How many frames a song has delivered so far, and whether that is all of them:
  written by the stage that reads the song, read by the later stages, which by then
  have received every frame counted."""

  def __init__(self):
    self.frames, self.done = 0, False


class _Fifo:
  """Frames held until a later stage of the same stream asks for exactly as many."""

  def __init__(self):
    self._blocks = collections.deque()
    self.frames = 0  # held

  def push(self, block: np.ndarray) -> None:
    self._blocks.append(block)
    self.frames += len(block)

  def tee(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for block in blocks:
      self.push(block)
      yield block

  def pop(self, n: int) -> np.ndarray:
    """The next `n` frames (zeros past what was pushed: the stream's zero padding)."""
    self.frames = max(0, self.frames - n)
    out = []
    while n > 0 and self._blocks:
      block = self._blocks.popleft()
      if len(block) > n:
        self._blocks.appendleft(block[n:])
        block = block[:n]
      out.append(block)
      n -= len(block)
    if n > 0 and out:
      out.append(np.zeros((n, *out[0].shape[1:]), np.float32))
    return np.concatenate(out) if len(out) != 1 else out[0]


def _model_inputs(blocks: Iterable[np.ndarray], channels: int, model_channels: int,
                  song: _SongLength, mix: _Fifo | None, rate: int, name: str
                  ) -> Iterator[np.ndarray]:
  """The song's blocks as float32 [n, channels], checked to be finite, counted into
  `song`, kept in `mix` (for the full band), and converted to the model's channels."""
  for block in blocks:
    block = np.asarray(block, np.float32).reshape(-1, channels)
    try:
      audio_lib.check_finite(block, song.frames, rate, name)
    except audio_lib.AudioError as e:
      raise SeparationError(str(e)) from None
    song.frames += len(block)
    if mix is not None:
      mix.push(block)
    if channels == model_channels:
      yield block
    elif channels == 1:
      yield np.repeat(block, model_channels, axis=1)
    else:
      yield block.mean(axis=1, keepdims=True)


def _average(streams: Sequence[Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
  """The frame-wise mean of streams of [n, ...] blocks of equal total length, in the
  first stream's blocks: each of the others is read only as far as it must be, so the
  streams (and what they read) advance together."""
  lead, rest = streams[0], streams[1:]
  held = [_Fifo() for _ in rest]
  scale = np.float32(1 / len(streams))
  for block in lead:
    total = np.array(block, np.float32)
    for stream, fifo in zip(rest, held):
      while fifo.frames < len(block):
        fifo.push(next(stream))
      total += fifo.pop(len(block))
    yield total * scale


def _to_channels(block: np.ndarray, channels: int) -> np.ndarray:
  if block.shape[2] == channels:
    return block
  if channels == 1:  # the average of the stems still sums to the (mono) mix
    return block.mean(axis=2, keepdims=True)
  return np.repeat(block, channels, axis=2)


def _batches(windows: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(stacked batch, number of real windows in it); the last batch is zero-padded."""
  batch = []
  for window in windows:
    batch.append(window)
    if len(batch) == size:
      yield np.stack(batch), size
      batch = []
  if batch:
    yield np.stack(batch + [np.zeros_like(batch[0])] * (size - len(batch))), len(batch)


def _unbatch(outputs: Any, count: int, kept: slice, clip: int | None) -> Iterator[np.ndarray]:
  outputs = np.asarray(outputs)[:count, :, kept]  # [count, S, kept, C]
  if clip is not None:
    outputs = outputs.copy()
    np.clip(outputs[:, clip], -1.0, 1.0, out=outputs[:, clip])
  for window in outputs:
    yield np.ascontiguousarray(window.transpose(1, 0, 2))


def _resample(blocks: Iterable[np.ndarray], from_rate: int, to_rate: int,
              channels: int) -> Iterator[np.ndarray]:
  """Band-limited, chunked resampling; soxr compensates its own delay, so the chunks
  join into what resampling the whole signal at once gives. Blocks are cut so that
  none comes out longer than about `RESAMPLED_BLOCK_FRAMES`."""
  import soxr

  stream = soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32",
                               quality=RESAMPLING_QUALITY)
  piece = max(1, RESAMPLED_BLOCK_FRAMES * from_rate // to_rate)
  for block in blocks:
    for start in range(0, len(block), piece):
      out = stream.resample_chunk(np.ascontiguousarray(block[start:start + piece], np.float32))
      if len(out):
        yield out
  out = stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)
  if len(out):
    yield out


def _exact_length(blocks: Iterable[np.ndarray], song: _SongLength,
                  shape: tuple[int, ...]) -> Iterator[np.ndarray]:
  """Cuts or zero-pads the stream to exactly `song.frames` frames. Never gives out more
  than the input has delivered so far, so the count need not be known in advance."""
  pending, emitted = np.zeros((0, *shape), np.float32), 0
  for block in blocks:
    pending = np.concatenate([pending, block]) if len(pending) else block
    n = min(len(pending), song.frames - emitted)
    if n > 0:
      yield pending[:n]
      pending, emitted = pending[n:], emitted + n
  n = song.frames - emitted  # the input is exhausted: its length is final
  if n > 0:
    yield np.concatenate([pending[:n], np.zeros((n - len(pending[:n]), *shape), np.float32)])
