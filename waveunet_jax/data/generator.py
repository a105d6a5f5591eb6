"""Deterministic, music-like synthetic multitrack corpus in the MUSDB18 layouts.

MUSDB18 cannot be downloaded here, so tests and the training demo use this corpus.
`make_track` synthesises one song (what it sounds like and why: its docstring);
`write_corpus` writes a corpus of them, which the program `python -m
waveunet_jax.synthetic` runs (docs/data.md).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
from typing import Callable, Sequence

import numpy as np

from waveunet_jax import audio, files
from waveunet_jax import stems as stems_lib

SAMPLE_RATE = 44100

_SCALES = {False: (0, 2, 4, 5, 7, 9, 11), True: (0, 2, 3, 5, 7, 8, 10)}  # major / minor
_PROGRESSIONS = {  # chord roots as scale degrees (0 = tonic), one chord per bar
    False: ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 0, 4), (3, 0, 4, 5), (0, 2, 3, 4)),
    True: ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 2), (5, 6, 0, 0), (0, 4, 5, 3)),
}
_VOCAL_SECTIONS = ("verse", "chorus", "bridge")
# Formants (Hz) of sung a, e, i, o, u for a low voice; higher voices scale them up.
_VOWELS = np.array([[730, 1090, 2440, 3300, 4200], [530, 1840, 2480, 3300, 4200],
                    [300, 2250, 3000, 3500, 4300], [570, 840, 2410, 3300, 4200],
                    [320, 870, 2240, 3300, 4200]], np.float32)
_F_AMP = np.array([1.0, 0.5, 0.25, 0.2, 0.1], np.float32)
_F_BW = np.array([130, 160, 220, 300, 380], np.float32)
_ADJ = ("Velvet", "Silent", "Electric", "Golden", "Broken", "Midnight", "Paper", "Crystal",
        "Hollow", "Neon", "Distant", "Wild", "Quiet", "Burning", "Frozen", "Secret")
_NOUN = ("Harbor", "Echoes", "Lanterns", "Rivers", "Satellites", "Mirrors", "Gardens",
         "Horizon", "Letters", "Shadows", "Highways", "Embers", "Oceans", "Whispers")


@dataclasses.dataclass(frozen=True)
class SongPlan:
  """The composition shared by all stems of one track."""
  bpm: float
  tonic: int      # pitch class of the key, 0 = C
  minor: bool
  swing: float    # delay of off-beat eighths, as a fraction of an eighth
  sections: tuple[tuple[str, int, int], ...]  # (name, first bar, end bar)
  chords: tuple[int, ...]                     # chord root (scale degree) per bar

  @property
  def beat(self) -> float:
    return 60.0 / self.bpm

  def time(self, bar: int, beat: float) -> float:
    """Seconds of `beat` (0..4) in `bar`, with swing on the off-beat eighths."""
    swung = self.swing * self.beat / 2 if (beat * 2) % 2 == 1 else 0.0
    return (4 * bar + beat) * self.beat + swung

  def section_times(self) -> list[tuple[str, float, float, bool]]:
    """(name, start s, end s, has vocals) for every section."""
    return [(s, self.time(a, 0), self.time(b, 0), s in _VOCAL_SECTIONS)
            for s, a, b in self.sections]

  def midi(self, degree: int) -> int:
    """MIDI pitch of a scale degree counted from the tonic of octave -1."""
    return self.tonic + _SCALES[self.minor][degree % 7] + 12 * (degree // 7)

  def chord_degrees(self, bar: int) -> tuple[int, int, int]:
    r = self.chords[bar]
    return r, r + 2, r + 4


def _rngs(seed: int, n: int = 6) -> list[np.random.Generator]:
  # Independent streams per part, so e.g. a drum change cannot shift the melody.
  return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def plan_song(seed: int, seconds: float) -> SongPlan:
  """Tempo, key, song form and chords of track `seed` (covers at least `seconds`)."""
  rng = _rngs(seed)[0]
  bpm = float(np.round(rng.uniform(78, 150), 1))
  minor = bool(rng.random() < 0.45)
  tonic = int(rng.integers(12))
  swing = float(rng.uniform(0.15, 0.35)) if rng.random() < 0.25 else 0.0
  progs = _PROGRESSIONS[minor]
  pa, pb, pc = (progs[i] for i in rng.choice(len(progs), 3, replace=False))
  bar_s = 240.0 / bpm
  # Instrumental sections capped at ~7 s so that short tracks still contain singing.
  short = lambda: int(rng.choice([b for b in (1, 2, 4) if b * bar_s <= 7] or [1]))
  form = [("intro", short()), ("verse", int(rng.choice([4, 8]))),
          ("chorus", int(rng.choice([4, 8]))), ("interlude", short())]
  while sum(b for _, b in form) * bar_s < seconds + bar_s:
    form += [("verse", 4), ("chorus", 8), ("bridge", 4), ("chorus", 4), ("interlude", short())]
  prog = {"verse": pa, "chorus": pb, "bridge": pc, "intro": pa, "interlude": pb}
  sections, chords, bar = [], [], 0
  for name, n in form:
    sections.append((name, bar, bar + n))
    chords += [prog[name][k % len(prog[name])] for k in range(n)]
    bar += n
  return SongPlan(bpm, tonic, minor, swing, tuple(sections), tuple(chords))


# ----------------------------------------------------------------------------- helpers
def _hz(midi):
  return 440.0 * 2.0 ** ((np.asarray(midi, np.float64) - 69.0) / 12.0)


def _add(buf: np.ndarray, start: int, sig: np.ndarray) -> None:
  """buf[start:] += sig, clipped to the buffer."""
  if start < 0:
    sig, start = sig[-start:], 0
  n = min(len(sig), len(buf) - start)
  if n > 0:
    buf[start:start + n] += sig[:n]


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
  """Hann-window moving average (edge-padded) over the last axis."""
  if k < 2:
    return x
  w = np.hanning(k + 2)[1:-1]
  w /= w.sum()
  xp = np.pad(x, (k, k), mode="edge")
  return np.convolve(xp, w, mode="same")[k:-k]


def _pan(x: np.ndarray, pos: float, delay: int = 0) -> np.ndarray:
  """Mono -> stereo, constant power; a small delay on one side decorrelates the channels."""
  a = (pos + 1) * np.pi / 4
  out = np.zeros((len(x), 2), np.float32)
  ch = 1 if pos < 0 else 0  # delay the quieter side (precedence effect keeps the image)
  out[:, 1 - ch] = x * np.float32((np.cos(a), np.sin(a))[1 - ch])
  out[delay:, ch] = x[:len(x) - delay] * np.float32((np.cos(a), np.sin(a))[ch])
  return out


def _band_noise(rng, n: int, lo: float, hi: float, sr: int) -> np.ndarray:
  """White noise band-passed in the frequency domain (smooth 4th-order edges)."""
  f = np.fft.rfftfreq(n, 1 / sr) + 1e-3
  spec = np.fft.rfft(rng.standard_normal(n)) / (1 + (lo / f) ** 4) / (1 + (f / hi) ** 4)
  y = np.fft.irfft(spec, n)
  return (y / (np.abs(y).max() + 1e-9)).astype(np.float32)


_TN = 4096
_TPH = np.arange(_TN + 1) / _TN  # one extra (wrapped) point saves a modulo in _lookup


_BASIS = np.sin(2 * np.pi * np.outer(_TPH, np.arange(1, 41)))  # harmonics 1..40


def _table(amps: np.ndarray) -> np.ndarray:
  """Single-cycle wavetable from harmonic amplitudes (at most 40)."""
  return (_BASIS[:, :len(amps)] @ amps).astype(np.float32)


def _lookup(tab: np.ndarray, phase: np.ndarray) -> np.ndarray:
  x = phase * _TN
  i = x.astype(np.int32)
  f = (x - i).astype(np.float32)
  a = tab[i]
  return a + f * (tab[i + 1] - a)


# Instruments: harmonic amplitudes when bright (attack) and dull (later), envelope in seconds.
_INSTR: dict[str, dict] = {
    "piano": dict(bright=lambda k: k ** -1.0 * np.where(k % 8 == 0, 0.2, 1),
                  dull=lambda k: k ** -3.0,
                  att=0.003, tau=1.6, sus=0.0, rel=0.12, btau=0.3, detune=1.5),
    "epiano": dict(bright=lambda k: (k == 1) + 0.15 * (k == 2) + 0.3 * (k == 14),
                   dull=lambda k: (k == 1) + 0.1 * (k == 2),
                   att=0.002, tau=1.4, sus=0.1, rel=0.1, btau=0.08, detune=2.0),
    "guitar": dict(bright=lambda k: k ** -0.9 * np.abs(np.sin(np.pi * k * 0.13)) * 2,
                   dull=lambda k: k ** -2.4,
                   att=0.002, tau=0.9, sus=0.0, rel=0.08, btau=0.15, detune=0.0),
    "pad": dict(bright=lambda k: k ** -1.3, dull=lambda k: k ** -2.0,
                att=0.35, tau=1.0, sus=1.0, rel=0.5, btau=1.0, detune=7.0),
    "organ": dict(bright=lambda k: np.select([k == 1, k == 2, k == 3, k == 4, k == 6, k == 8],
                                             [1, .8, .6, .4, .3, .25]),
                  dull=lambda k: np.select([k == 1, k == 2, k == 3, k == 4], [1, .8, .6, .4]),
                  att=0.01, tau=1.0, sus=1.0, rel=0.05, btau=0.4, detune=3.0),
    "pluck": dict(bright=lambda k: k ** -0.8, dull=lambda k: k ** -3.0,
                  att=0.002, tau=0.25, sus=0.0, rel=0.05, btau=0.06, detune=0.0),
    "lead": dict(bright=lambda k: k ** -1.0, dull=lambda k: k ** -1.6,
                 att=0.02, tau=1.0, sus=0.8, rel=0.08, btau=0.5, detune=4.0),
    "bass_finger": dict(bright=lambda k: k ** -1.6, dull=lambda k: k ** -4.0,
                        att=0.004, tau=1.0, sus=0.25, rel=0.04, btau=0.12, detune=0.0),
    "bass_pick": dict(bright=lambda k: k ** -1.1, dull=lambda k: k ** -2.8,
                      att=0.002, tau=0.8, sus=0.2, rel=0.04, btau=0.08, detune=0.0),
    "bass_synth": dict(bright=lambda k: k ** -1.0, dull=lambda k: k ** -3.0,
                       att=0.003, tau=0.5, sus=0.6, rel=0.03, btau=0.2, detune=0.0),
}


class _Synth:
  """Renders wavetable notes; tables are band-limited per pitch. Like a sampler, rendered
  notes are reused (two round-robin variants per pitch and length), which keeps this fast."""

  def __init__(self, sr: int, rng: np.random.Generator):
    self.sr, self.rng, self.cache, self.notes = sr, rng, {}, {}

  def tables(self, name: str, midi: int):
    key = (name, midi)
    if key not in self.cache:
      spec = _INSTR[name]
      k = np.arange(1, max(2, int(min(40, 0.4 * self.sr / _hz(midi)))) + 1, dtype=np.float64)
      self.cache[key] = (_table(spec["bright"](k)), _table(spec["dull"](k)))
    return self.cache[key]

  def note(self, name: str, midi: float, dur: float, vib: float = 0.0) -> np.ndarray:
    """A note (do not modify the returned array: it may be shared)."""
    key = (name, midi, int(dur * self.sr), vib, int(self.rng.integers(2)))
    if key not in self.notes:
      self.notes[key] = self._render(name, midi, dur, vib)
    return self.notes[key]

  def _render(self, name: str, midi: float, dur: float, vib: float) -> np.ndarray:
    spec, sr = _INSTR[name], self.sr
    bright, dull = self.tables(name, int(round(midi)))
    n = int((dur + 4 * spec["rel"]) * sr)
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    # Low notes ring longer, as on real strings.
    tau = spec["tau"] * (1 + max(0.0, 60 - midi) / 24)
    env = np.minimum(t / spec["att"], 1) * (spec["sus"] + (1 - spec["sus"]) * np.exp(-t / tau))
    env *= np.exp(-np.maximum(t - dur, 0) / spec["rel"])
    w = np.exp(-t / spec["btau"]).astype(np.float32)
    out = np.zeros(n, np.float32)
    for cents in ((-spec["detune"], spec["detune"]) if spec["detune"] else (0.0,)):
      f = _hz(midi + cents / 100)
      if vib:  # delayed vibrato for leads
        f = f * 2 ** (vib * np.clip(t / 0.4 - 0.5, 0, 1) * np.sin(2 * np.pi * 5.5 * t) / 12)
        ph = (np.cumsum(f) / sr + self.rng.random()) % 1.0
      else:
        ph = (f * np.arange(n) / sr + self.rng.random()) % 1.0
      d = _lookup(dull, ph)
      out += d + w * (_lookup(bright, ph) - d)
    return (out * env).astype(np.float32)


def _melody(rng, plan: SongPlan, bars: Sequence[int], lo: int, hi: int,
            phrase_bars: int) -> list[tuple[float, float, int]]:
  """Phrases of (t0, t1, scale degree) on the key's scale, resting at each phrase end."""
  degs = [d for d in range(0, 80) if lo <= plan.midi(d) <= hi]
  dlo, dhi = degs[0], degs[-1]
  d = int(rng.integers(dlo + 2, dhi - 1))
  steps, p_steps = [-3, -2, -1, 0, 1, 2, 3, 4], [.06, .14, .25, .12, .25, .1, .05, .03]
  notes, rhythms = [], []
  for p in range(0, len(bars), phrase_bars):
    pb = bars[p:p + phrase_bars]
    length = 4 * len(pb)
    sing = length - float(rng.choice([1, 1.5, 2, 3])) if length > 4 else length - 1.0
    if rhythms and rng.random() < 0.6 and rhythms[-1][-1][0] < sing:  # motifs repeat
      rhythm = rhythms[-1]
    else:
      rhythm, pos = [], float(rng.choice([0, 0, 0.5, 1]))
      while pos < sing - 0.25:
        dur = min(float(rng.choice([.5, .5, 1, 1, 1.5, 2])), sing - pos)
        rhythm.append((pos, dur))
        pos += dur
      rhythm[-1] = (rhythm[-1][0], max(rhythm[-1][1], 1.5))  # phrase ends on a long note
      rhythms.append(rhythm)
    for pos, dur in rhythm:
      bar, beat = pb[min(int(pos // 4), len(pb) - 1)], pos % 4
      d += int(rng.choice(steps, p=p_steps))
      d = dlo + abs(d - dlo) if d < dlo else (dhi - abs(d - dhi) if d > dhi else d)
      if beat in (0, 2) and rng.random() < 0.7:  # strong beats land on chord tones
        chord = {c % 7 for c in plan.chord_degrees(bar)}
        d = min((x for x in range(d - 3, d + 4) if x % 7 in chord and dlo <= x <= dhi),
                key=lambda x: abs(x - d), default=d)
      t0 = plan.time(bar, beat)
      notes.append((t0, t0 + dur * plan.beat * float(rng.uniform(0.85, 1.0)), d))
  return notes


# ------------------------------------------------------------------------------ vocals
def _stft_filter(x: np.ndarray, resp: Callable[[np.ndarray], np.ndarray], sr: int) -> np.ndarray:
  """Time-varying zero-phase filter: resp(frame centre times) -> (frames, 1025) magnitudes."""
  N, hop, nfft = 1024, 512, 2048
  win = np.hanning(N + 1)[:N].astype(np.float32)  # periodic Hann sums to 1 at 50% overlap
  xp = np.concatenate([np.zeros(hop, np.float32), x, np.zeros(N + hop, np.float32)])
  frames = np.lib.stride_tricks.sliding_window_view(xp, N)[::hop]
  idx = np.nonzero(np.abs(frames).max(axis=1) > 0)[0]  # skip silence: most of a vocal track
  y = np.zeros(((len(frames) + 4) * hop), np.float32)
  if len(idx) == 0:
    return y[:len(x)]
  # Centre the frame in the FFT buffer (delay nfft/4) so the filter's acausal half fits.
  shift = np.exp(-2j * np.pi * np.arange(nfft // 2 + 1) * (nfft // 4) / nfft).astype(np.complex64)
  H = resp(((idx - 1) * hop + N / 2) / sr) * shift
  out = np.fft.irfft(np.fft.rfft(frames[idx] * win, nfft) * H, nfft).astype(np.float32)
  blocks = y.reshape(-1, hop)
  for j in range(nfft // hop):
    blocks[idx + j] += out[:, j * hop:(j + 1) * hop]
  return y[hop + nfft // 4: hop + nfft // 4 + len(x)]


def _glottal(phase: np.ndarray, dt: np.ndarray, oq: float) -> np.ndarray:
  """Rosenberg glottal flow derivative. The abrupt closure (a step back to zero) gives the
  voice its -6 dB/octave harmonic series; polyBLEP smooths that step to avoid aliasing.
  phase in [0, 1), dt = f0 / sample rate."""
  a, c = np.float32(0.62 * oq), np.float32(0.38 * oq)  # opening / closing fractions of the period
  pi = np.float32(np.pi)
  phase = phase.astype(np.float32)
  opening = phase < a
  # one sin for both parts
  s = np.sin(np.where(opening, pi / a * phase, pi / (2 * c) * (phase - a)))
  e = np.where(opening, pi / (2 * a) * s, np.where(phase < a + c, -pi / (2 * c) * s, np.float32(0)))
  since = (phase - (a + c)) % np.float32(1)
  dt = dt.astype(np.float32)
  u, w = since / dt, (1 - since) / dt  # samples since / until the closure
  blep = np.where(u < 1, 2 * u - u * u - 1, np.where(w < 1, (1 - w) ** 2, np.float32(0)))
  return e + pi / (4 * c) * blep  # step of height pi / (2c)


def _voice(notes, sr: int, n: int, rng, v: dict) -> np.ndarray:
  """Sing notes, rendering only around groups of notes (silence is free)."""
  out = np.zeros(n, np.float32)
  notes = [x for x in notes if x[0] < n / sr]
  if not notes:
    return out
  cuts = [k + 1 for k in range(len(notes) - 1) if notes[k + 1][0] - notes[k][1] > 1.5]
  for g0, g1 in zip([0] + cuts, cuts + [len(notes)]):
    group = notes[g0:g1]
    a = max(0, int((group[0][0] - 0.6) * sr))
    b = min(n, int((group[-1][1] + 0.4) * sr))
    shifted = [(x[0] - a / sr, x[1] - a / sr) + tuple(x[2:]) for x in group]
    out[a:b] = _sing(shifted, sr, b - a, rng, v)
  return out


def _sing(notes, sr: int, n: int, rng, v: dict) -> np.ndarray:
  """Sing notes [(t0, t1, midi, vowel, consonant, level)]; consonant 0 none, 1 fricative,
  2 plosive, 3 nasal. Controls run at sr/64 and are interpolated to audio rate."""
  hop = 64
  cr = sr / hop
  tc = np.arange(n // hop + 2) / cr
  t0, t1, midi, vowel, cons, lev = (np.array(c) for c in zip(*notes))
  vowel, cons = vowel.astype(int), cons.astype(int)
  i = np.clip(np.searchsorted(t0, tc, side="right") - 1, 0, len(t0) - 1)
  nxt = np.minimum(i + 1, len(t0) - 1)
  since, until = tc - t0[i], t0[nxt] - tc
  # pitch (semitones): glide between notes, vibrato fading in on held notes, slow drift
  pitch = _smooth(midi[i].astype(np.float64), int(v["glide"] * cr))
  drift = _smooth(rng.standard_normal(len(tc)), int(0.25 * cr))
  pitch += v["vib"] * np.clip((since - 0.2) / 0.3, 0, 1) * np.sin(2 * np.pi * v["vib_hz"] * tc)
  pitch += 0.15 * drift / (drift.std() + 1e-9)
  # syllable envelopes, with consonants shaping the onsets
  amp = np.where(since < 0, 0, np.where(tc < t1[i], np.minimum(since / 0.03, 1),
                                         np.exp(-(tc - t1[i]) / 0.05))) * lev[i]
  fric = (cons[i] == 1) & (since >= 0) & (since < 0.07)
  amp *= np.where(fric, since / 0.07, 1) * np.where((cons[i] == 3) & (since < 0.05), 0.4, 1)
  amp *= np.where((cons[nxt] == 2) & (nxt > i) & (until > 0) & (until < 0.03), 0.05, 1)
  # consonant noise ~8-12 dB below the vowels, as in sung syllables
  noise_env = np.where(fric, np.sin(np.pi * since / 0.07), 0) * lev[i] * 0.015
  burst = (cons[i] == 2) & (since >= 0) & (since < 0.04)
  noise_env += np.where(burst, np.exp(-np.maximum(since, 0) / 0.006), 0) * lev[i] * 0.03
  breath = np.zeros_like(tc)
  gaps = np.nonzero(t0 - np.concatenate([[-np.inf], t1[:-1]]) > 0.5)[0]  # phrase starts
  for k in gaps:  # audible in-breath before each phrase
    s = (tc > t0[k] - 0.4) & (tc < t0[k] - 0.08)
    breath[s] += np.sin(np.pi * (tc[s] - t0[k] + 0.4) / 0.32) * 0.03
  amp = _smooth(amp * (1 + 0.06 * _smooth(rng.standard_normal(len(tc)), 8)), int(0.01 * cr))
  F = np.stack([_smooth(c, int(0.05 * cr)) for c in (_VOWELS[vowel[i]] * v["fscale"]).T], 1)

  ta = np.arange(n) / sr
  dt = np.interp(ta, tc, _hz(pitch) / sr)
  phase = np.cumsum(dt) % 1.0
  a = np.interp(ta, tc, amp).astype(np.float32)
  src = _glottal(phase, dt, v["oq"]) * a / 40
  asp = rng.standard_normal(n, dtype=np.float32)
  # aspiration noise, pulsing with the glottal cycle, plus the in-breaths
  asp_env = a * v["breath"] * (0.6 + 0.4 * np.cos(2 * np.pi * phase)) + np.interp(ta, tc, breath)
  src += asp * asp_env.astype(np.float32)
  f = np.fft.rfftfreq(2048, 1 / sr).astype(np.float32)
  # singer's brightness (gradual vs abrupt closure), no rumble, no energy near Nyquist
  tilt = f ** 2 / (f ** 2 + 100.0 ** 2) / np.sqrt(1 + (f / v["tilt"]) ** 2) / (1 + (f / 11000) ** 4)

  def formants(times):
    H = np.full((len(times), len(f)), 0.01, np.float32)
    for k in range(5):
      Fk = np.interp(times, tc, F[:, k]).astype(np.float32)[:, None]
      H += _F_AMP[k] / (1 + ((f - Fk) / (_F_BW[k] / 2)) ** 2)  # valleys ~20 dB down
    return H * tilt

  out = _stft_filter(src, formants, sr)
  hiss = rng.standard_normal(n, dtype=np.float32) * np.interp(ta, tc, noise_env).astype(np.float32)
  sib = (f / v["sib"]) ** 4 / (1 + (f / v["sib"]) ** 4) / (1 + (f / 12000) ** 4)
  return out + _stft_filter(hiss, lambda t: np.broadcast_to(sib, (len(t), len(f))), sr)


def _vocals(plan: SongPlan, rng, sr: int, n: int) -> np.ndarray:
  high = rng.random() < 0.5
  lo, hi = (55, 77) if high else (45, 67)  # roughly alto/soprano vs baritone/tenor range
  v = dict(glide=rng.uniform(0.03, 0.09), tilt=rng.uniform(2500, 6000),
           vib=rng.uniform(0.15, 0.6), vib_hz=rng.uniform(4.5, 6.5),
           oq=rng.uniform(0.5, 0.75), breath=rng.uniform(0.004, 0.015),
           fscale=rng.uniform(1.1, 1.2) if high else rng.uniform(0.95, 1.05),
           sib=rng.uniform(4000, 7000))
  phrase = int(rng.choice([1, 2, 2]))
  lead, harmony = [], []
  for name, a, b in plan.sections:
    if name not in _VOCAL_SECTIONS or a * 4 * plan.beat > n / sr:
      continue
    up = 3 if name == "chorus" else 0
    level = {"verse": 0.85, "chorus": 1.0, "bridge": 0.8}[name]
    for t0, t1, d in _melody(rng, plan, range(a, b), lo + up, hi - 3 + up, phrase):
      # vowel, consonant, loudness of the syllable
      syl = (int(rng.integers(5)), int(rng.choice(4, p=[.3, .25, .3, .15])),
             level * rng.uniform(0.8, 1.0))
      lead.append((t0, t1, plan.midi(d)) + syl)
      if name == "chorus":  # harmony a third above, same lyrics
        harmony.append((t0, t1, plan.midi(d + 2)) + syl)
  out = np.zeros((n, 2), np.float32)
  if lead:
    out += _pan(_voice(lead, sr, n, rng, v), 0.0)
  if harmony and rng.random() < 0.7:
    v2 = dict(v, vib=v["vib"] * 0.7, oq=min(0.8, v["oq"] + 0.05))
    pos = float(rng.choice([-0.4, 0.4]))
    out += _pan(_voice(harmony, sr, n, rng, v2) * 0.35, pos, int(sr * 0.0004))
  return out


# ------------------------------------------------------------------------------- drums
def _drum_kit(rng, sr: int) -> dict[str, list[np.ndarray]]:
  """Three round-robin variants of each piece (identical repeats sound machine-like)."""
  kit: dict[str, list[np.ndarray]] = {}
  hi, lo = rng.uniform(110, 170), rng.uniform(42, 58)
  ptau, atau = rng.uniform(.02, .05), rng.uniform(.15, .35)
  snare_f, snare_tau = rng.uniform(170, 240), rng.uniform(.1, .22)
  metal = rng.uniform(0.8, 1.2) * np.array([205.3, 304.4, 369.6, 522.7, 540.0, 800.0])
  hat_tau = rng.uniform(0.03, 0.06)
  for _ in range(3):
    j = lambda: rng.uniform(0.97, 1.03)
    t = np.arange(int(0.6 * sr)) / sr
    f = lo + (hi * j() - lo) * np.exp(-t / ptau)
    body = np.tanh(2 * np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / (atau * j())))
    kick = body + 0.3 * _band_noise(rng, len(t), 1000, 8000, sr) * np.exp(-t / 0.003)
    t = np.arange(int(0.45 * sr)) / sr
    tone = np.sin(2 * np.pi * snare_f * j() * t) + 0.5 * np.sin(2 * np.pi * 1.6 * snare_f * t)
    tone *= np.exp(-t / 0.05)
    snare = 0.6 * tone + _band_noise(rng, len(t), 1500, 10000, sr) * np.exp(-t / (snare_tau * j()))
    t = np.arange(int(0.5 * sr)) / sr
    sq = np.sign(np.sin(2 * np.pi * np.outer(t, metal * j()))).sum(1)
    spec = np.fft.rfft(sq + 3 * rng.standard_normal(len(t)))
    fr = np.fft.rfftfreq(len(t), 1 / sr) + 1
    hat = np.fft.irfft(spec / (1 + (6500 / fr) ** 4) / (1 + (fr / 16000) ** 4), len(t))
    hat /= np.abs(hat).max()
    kit.setdefault("kick", []).append(kick)
    kit.setdefault("snare", []).append(snare)
    kit.setdefault("hat", []).append(hat * np.exp(-t / hat_tau))
    kit.setdefault("open", []).append(hat * np.exp(-t / 0.3))
    t = np.arange(int(0.7 * sr)) / sr
    for k, tf in enumerate((200, 150, 105)):
      f = tf * (1 + 0.5 * np.exp(-t / 0.05))
      tom = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.25)
      tom += 0.1 * _band_noise(rng, len(t), 500, 6000, sr) * np.exp(-t / 0.05)
      kit.setdefault(f"tom{k}", []).append(tom)
  t = np.arange(int(2.5 * sr)) / sr
  crash = _band_noise(rng, len(t), 3500, 15000, sr) * np.exp(-t / 1.0) * np.minimum(t / 0.002, 1)
  kit["crash"] = [crash]
  return {k: [(x / np.abs(x).max()).astype(np.float32) for x in v] for k, v in kit.items()}


_GROOVES = {  # 16th-note steps of one bar
    "rock": dict(kick=(0, 8, 10), snare=(4, 12), hat=tuple(range(0, 16, 2))),
    "half": dict(kick=(0, 6, 10), snare=(8,), hat=tuple(range(0, 16, 2))),
    "four": dict(kick=(0, 4, 8, 12), snare=(4, 12), hat=tuple(range(0, 16, 1))),
    "funk": dict(kick=(0, 3, 10), snare=(4, 12), hat=tuple(range(16)), ghost=(7, 9, 14)),
}
_DRUM_PAN = {"kick": 0.0, "snare": 0.1, "hat": 0.4, "open": 0.4, "crash": -0.5,
             "tom0": 0.35, "tom1": -0.1, "tom2": -0.45}
_DRUM_GAIN = {"kick": 1.0, "snare": 0.8, "hat": 0.25, "open": 0.22, "crash": 0.3,
              "tom0": 0.6, "tom1": 0.6, "tom2": 0.6}


def _drums(plan: SongPlan, rng, sr: int, n: int) -> np.ndarray:
  kit = _drum_kit(rng, sr)
  groove = _GROOVES[str(rng.choice(list(_GROOVES)))]
  intro_drums, jitter = rng.random() < 0.5, rng.uniform(0.002, 0.006)
  bufs = {k: np.zeros(n, np.float32) for k in kit}

  def hit(piece: str, bar: int, step: float, vel: float) -> None:
    t = plan.time(bar, step / 4) + rng.normal(0, jitter)
    smp = kit[piece][int(rng.integers(len(kit[piece])))]
    _add(bufs[piece], int(t * sr), smp * (vel * rng.uniform(0.85, 1.05) * _DRUM_GAIN[piece]))

  for name, a, b in plan.sections:
    for bar in range(a, min(b, int(n / sr / (4 * plan.beat)) + 1)):
      if name == "intro" and not intro_drums:
        continue
      fill = bar == b - 1 and name != "intro" and rng.random() < 0.6
      end = 12 if fill else 16
      if bar == a and name in ("chorus", "interlude", "bridge"):
        hit("crash", bar, 0, 1.0)
      hats = "open" if name == "chorus" and rng.random() < 0.5 else "hat"
      for s in groove["hat"]:
        if s < end and (hats == "hat" or s % 4 == 2):
          hit(hats, bar, s, 1.0 if s % 4 == 0 else 0.7 if s % 2 == 0 else 0.45)
      if name == "intro":
        hit("kick", bar, 0, 0.9)
        continue
      for s in groove["kick"] + ((14,) if rng.random() < 0.2 else ()):
        if s < end:
          hit("kick", bar, s, 1.0 if s % 8 == 0 else 0.8)
      for s in groove["snare"]:
        if s < end:
          hit("snare", bar, s, 1.0)
      for s in groove.get("ghost", ()) + ((7,) if rng.random() < 0.25 else ()):
        if s < end:
          hit("snare", bar, s, 0.2)
      if fill:  # crescendo over toms and snare into the next section
        pieces = [str(p) for p in rng.choice(["snare", "tom0", "tom1", "tom2"], 4)]
        for k, s in enumerate(range(12, 16)):
          hit(sorted(pieces, key=lambda p: p[-1])[k], bar, s, 0.6 + 0.1 * k)
  out = sum(_pan(bufs[k], _DRUM_PAN[k], int(rng.integers(0, 20))) for k in bufs)
  return out


# -------------------------------------------------------------------------- bass, other
def _bass(plan: SongPlan, rng, sr: int, n: int) -> np.ndarray:
  syn = _Synth(sr, rng)
  inst = str(rng.choice(["bass_finger", "bass_pick", "bass_synth"]))
  style = int(rng.integers(3))
  patterns = [[(b / 2, .45, 0) for b in range(8)],  # (beat, length in beats, interval)
              [(0, .9, 0), (1, .9, 0), (2, .9, 7), (3, .9, 12)],
              [(0, 1.4, 0), (1.5, .45, 0), (2, .9, 0), (2.75, .45, 12), (3.5, .45, 7)]]
  intro_bass = rng.random() < 0.5
  out = np.zeros(n, np.float32)
  last_bar = int(n / sr / (4 * plan.beat)) + 1
  for name, a, b in plan.sections:
    for bar in range(a, min(b, last_bar)):
      if name == "intro" and not intro_bass:
        continue
      root = 28 + (plan.midi(plan.chords[bar]) - 28) % 12  # E1..D#2
      pat = [(0, 1.9, 0), (2, 1.9, 0)] if name in ("intro", "bridge") else patterns[style]
      if bar + 1 < len(plan.chords) and len(pat) > 2 and rng.random() < 0.35:
        nxt = 28 + (plan.midi(plan.chords[bar + 1]) - 28) % 12
        approach = nxt + int(rng.choice([-1, 1, 2])) - root
        pat = [p for p in pat if p[0] < 3.5] + [(3.5, .45, approach)]
      for beat, dur, iv in pat:
        t = plan.time(bar, beat) + rng.normal(0, 0.004)
        _add(out, int(t * sr), syn.note(inst, root + iv, dur * plan.beat) * rng.uniform(0.85, 1.0))
  return _pan(out, 0.0)


def _voicing(plan: SongPlan, bar: int, lo: int, width: int = 12) -> list[int]:
  """Chord tones of `bar` in [lo, lo + width), closed position."""
  pcs = {plan.midi(d) % 12 for d in plan.chord_degrees(bar)}
  return [m for m in range(lo, lo + width) if m % 12 in pcs]


def _other(plan: SongPlan, rng, sr: int, n: int) -> np.ndarray:
  syn = _Synth(sr, rng)
  main = str(rng.choice(["piano", "guitar", "pad", "organ", "epiano", "distortion"]))
  layer = str(rng.choice(["pad", "pluck"])) if main != "pad" else "pluck"
  rhythm = [(0, 2), (0, 1, 2, 3), (0, 1.5, 3), (0, .5, 1.5, 2, 2.5, 3.5)][int(rng.integers(4))]
  lo = int(rng.integers(52, 58))
  pan_main = float(rng.uniform(-0.5, 0.5))
  tracks = {k: np.zeros(n, np.float32) for k in ("main", "main2", "layer", "lead", "dist")}
  last_bar = int(n / sr / (4 * plan.beat)) + 1
  for name, a, b in plan.sections:
    for bar in range(a, min(b, last_bar)):
      chord = _voicing(plan, bar, lo)
      t_bar = plan.time(bar, 0)
      if main in ("pad", "organ") or name == "intro" and rng.random() < 0.5:
        hits = [(0.0, 4.0)]
      else:
        hits = [(h, (rhythm + (4,))[k + 1] - h) for k, h in enumerate(rhythm)]
      if main == "distortion":  # power chords: muted eighths in verses, ringing in choruses
        hits = [(0.0, 4.0)] if name in ("chorus", "interlude") else [(b / 2, .4) for b in range(8)]
      for h, dur in hits:
        t = plan.time(bar, h)
        if main == "distortion":
          root = lo - 12 + (plan.midi(plan.chords[bar]) - lo) % 12
          for side, key in ((0, "main"), (1, "dist")):  # double-tracked: two performances
            for m in (root, root + 7, root + 12):
              note = syn.note("guitar", m, dur * plan.beat) * rng.uniform(0.8, 1.0)
              _add(tracks[key], int((t + rng.normal(0, 0.006)) * sr), note)
          continue
        if main == "guitar":  # strum: strings offset by a few ms, up-strokes reversed and softer
          strings = _voicing(plan, bar, lo - 12, 24)[:6]
          up = h % 1 == 0.5
          for k, m in enumerate(strings[::-1] if up else strings):
            note = syn.note("guitar", m, dur * plan.beat) * (0.5 if up else 0.7)
            _add(tracks["main"], int((t + 0.012 * k) * sr), note)
          continue
        for m in chord + ([chord[0] - 12] if main == "piano" and h == 0 else []):
          note = syn.note(main, m, dur * plan.beat * 0.95) * rng.uniform(0.7, 0.9)
          _add(tracks["main2" if main in ("pad", "organ") and m % 2 else "main"], int(t * sr), note)
      if name == "chorus":
        if layer == "pad":
          for m in _voicing(plan, bar, lo + 7):
            _add(tracks["layer"], int(t_bar * sr), syn.note("pad", m, 4 * plan.beat) * 0.5)
        else:  # arpeggio, an octave up
          arp = _voicing(plan, bar, lo + 12)
          for s in range(8):
            note = syn.note("pluck", arp[s % len(arp)], 0.4 * plan.beat) * 0.5
            _add(tracks["layer"], int(plan.time(bar, s / 2) * sr), note)
    if name == "interlude" and a * 4 * plan.beat < n / sr:
      for t0, t1, d in _melody(rng, plan, range(a, b), 62, 84, 2):
        _add(tracks["lead"], int(t0 * sr), syn.note("lead", plan.midi(d), t1 - t0, vib=0.4) * 0.7)
  if main == "distortion":  # saturate, then a cabinet-like low-pass; hard-panned L/R
    cab = np.hanning(11)[1:-1] / np.hanning(11)[1:-1].sum()
    for key in ("main", "dist"):
      x = np.tanh(tracks[key] * np.float32(5 / (np.abs(tracks[key]).max() + 1e-9)))
      tracks[key] = np.convolve(x, cab, mode="same").astype(np.float32) * np.float32(0.5)
    pan_main = 0.8
  # Echo on the layer (dotted eighth), a common production trick that also widens it.
  d = int(0.75 * plan.beat * sr)
  echo = np.zeros(n, np.float32)
  echo[d:] = tracks["layer"][:-d] * 0.35
  return (_pan(tracks["main"], pan_main, int(rng.integers(5, 25)))
          + _pan(tracks["main2"] + tracks["dist"], -pan_main, 13)
          + _pan(tracks["layer"], -pan_main * 0.8, 9) + _pan(echo, pan_main * 0.8)
          + _pan(tracks["lead"], float(rng.uniform(-0.2, 0.2)), 7))


# -------------------------------------------------------------------------------- mix
def _fast_len(n: int) -> int:
  """Smallest 2^a 3^b 5^c >= n (fast for numpy's FFT, and much shorter than the next 2^k)."""
  best, p5 = 1 << (n - 1).bit_length(), 1
  while p5 < best:
    p35 = p5
    while p35 < best:
      p2 = 1 << max(0, -(-n // p35) - 1).bit_length()  # smallest power of two >= n / p35
      best, p35 = min(best, p35 * p2), p35 * 3
    p5 *= 5
  return best


def _reverb_irs(rng, sr: int, nfft: int) -> np.ndarray:
  """Two decorrelated room responses (L, R) as spectra: early taps + decaying noise tail,
  whose high frequencies die away faster, as in real rooms."""
  rt60 = rng.uniform(0.6, 1.6)
  m = int(rt60 * 1.2 * sr)
  t = np.arange(m) / sr
  irs = []
  for _ in range(2):
    bright = rng.standard_normal(m) * np.exp(-6.9 * t / (rt60 * 0.4))
    dark = _band_noise(rng, m, 20, 2500, sr) * 4 * np.exp(-6.9 * t / rt60)
    ir = (bright + dark) * np.minimum(t / 0.01, 1)
    for ti in rng.uniform(0.005, 0.05, 6):
      ir[int(ti * sr)] += rng.uniform(-3, 3)
    ir = np.concatenate([np.zeros(int(rng.uniform(0.01, 0.03) * sr)), ir])
    irs.append(np.fft.rfft((ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32), nfft))
  return np.stack(irs).astype(np.complex64)


def make_track(seed: int, seconds: float, sample_rate: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
  """Synthesize one track: {'vocals', 'drums', 'bass', 'other', 'mixture'} -> float32 [T, 2],
  mixture == sum of the four stems. Deterministic in (seed, seconds, sample_rate).

  A model trained on this corpus is later judged on real recordings, so each track is a
  small *song* rather than test tones: all stems share one tempo, key and chord
  progression and follow a song form (intro / verse / chorus / interlude / bridge,
  `plan_song`); the singer rests in the instrumental sections and breathes between
  phrases.

  * vocals: glottal-pulse source on a melody of the key's scale (portamento, delayed
    vibrato, pitch drift), vowel formants changing per syllable, fricative/plosive/breath
    noise, and a quieter harmony voice in choruses;
  * drums: kick (pitch-dropping sine), snare (tone + noise), metallic hi-hats, toms and
    crash, on a per-track groove with ghost notes, fills and humanised timing;
  * bass: plucked notes on the chord roots with fifths, octaves and approach notes;
  * other: piano / guitar / pad / organ / e-piano comping, an arpeggio in choruses and
    an instrumental lead melody in interludes (so "melodic" does not simply mean
    "vocals").

  Every source is panned and decorrelated between channels and gets a cheap convolution
  reverb. Vocals are about as loud as the accompaniment; a gentle limiter driven by the
  mixture (the same gain on every stem, so mixture == sum of stems) lowers the crest
  factor towards that of mastered music, and the mixture peak stays below 0.9.
  """
  if not (np.isfinite(seconds) and seconds > 0):
    raise ValueError(f"seconds must be a positive number, got {seconds!r}")
  if sample_rate < 8000:
    raise ValueError(f"sample_rate must be >= 8000, got {sample_rate}")
  sr, n = int(sample_rate), int(round(seconds * sample_rate))
  plan = plan_song(seed, seconds)
  _, r_voc, r_drum, r_bass, r_oth, r_mix = _rngs(seed)
  # Levels (dB re. vocals, measured where each stem is active): the accompaniment as a
  # whole ends up about as loud as the voice, with per-track variation.
  rel_db = {"vocals": r_mix.uniform(-2, 3), "drums": r_mix.uniform(-6, -2),
            "bass": r_mix.uniform(-8, -4), "other": r_mix.uniform(-7, -3)}
  # Reverb runs at half the sample rate: half the FFT work, and room tails carry little
  # energy above 10 kHz anyway.
  n2 = (n + 1) // 2
  nfft = _fast_len(n2 + int(1.1 * sr))
  irs = _reverb_irs(r_mix, sr // 2, nfft)
  wet = {"vocals": r_mix.uniform(0.2, 0.45), "drums": r_mix.uniform(0.08, 0.2),
         "bass": 0.0, "other": r_mix.uniform(0.15, 0.35)}

  def stem(name: str, render: Callable, rng: np.random.Generator) -> np.ndarray:
    x = render(plan, rng, sr, n)
    if wet[name]:
      half = np.pad(x.mean(axis=1), (0, 2 * n2 - n)).reshape(n2, 2).mean(axis=1)
      y = np.fft.irfft(np.fft.rfft(half, nfft)[None] * irs, nfft)[:, :n2 + 1]
      y *= np.float32(wet[name])
      up = np.stack([y[:, :-1], (y[:, :-1] + y[:, 1:]) * np.float32(0.5)], axis=-1).reshape(2, -1)
      x = x + up[:, :n].T
    m = min(n, 2048)
    frames = np.sqrt(np.mean(x[: n // m * m].reshape(-1, m, 2) ** 2, axis=(1, 2)))
    active = frames[frames > frames.max() * 0.05]
    rms = np.sqrt(np.mean(active ** 2)) if len(active) else 1.0
    return (x * np.float32(10 ** (rel_db[name] / 20) / (rms + 1e-12))).astype(np.float32)

  # Stems use separate random streams, so rendering them in threads stays deterministic
  # (numpy releases the GIL in the heavy array work).
  jobs = {"vocals": (_vocals, r_voc), "drums": (_drums, r_drum), "bass": (_bass, r_bass),
          "other": (_other, r_oth)}
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    futures = {k: pool.submit(stem, k, f, r) for k, (f, r) in jobs.items()}
    stems = {k: f.result() for k, f in futures.items()}
  # Gentle limiter: one gain curve for all stems, driven by the mixture's block peaks.
  mix = sum(stems.values())
  blk = 512
  peaks = np.abs(mix[: n // blk * blk]).reshape(-1, blk * 2).max(axis=1) if n >= blk else np.ones(1)
  thr = peaks.max() * 10 ** (-r_mix.uniform(0, 6) / 20)
  gain = np.minimum(1.0, thr / np.maximum(peaks, 1e-9))
  gain = _smooth(np.minimum.reduce([np.roll(gain, s) for s in (-2, -1, 0, 1, 2)]), 9)
  g = np.interp(np.arange(n, dtype=np.float32), (np.arange(len(gain)) + 0.5) * blk, gain)
  g = g.astype(np.float32)[:, None]
  # One final gain per sample: limiter curve times the scale that puts the mixture peak at
  # 0.6-0.89 (and keeps every stem below full scale).
  peak_mix = np.abs(mix * g).max() + 1e-9
  peak_stem = max(np.abs(x * g).max() for x in stems.values()) + 1e-9
  g *= np.float32(min(r_mix.uniform(0.6, 0.89) / peak_mix, 0.98 / peak_stem))
  out = {k: stems[k] * g for k in stems_lib.STEMS}
  out["mixture"] = out["vocals"] + out["drums"] + out["bass"] + out["other"]
  return out


# ------------------------------------------------------------------------------ corpus
def _track_seed(seed: int, split: str, index: int) -> int:
  entropy = [seed, ("train", "test").index(split), index]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _track_name(split: str, index: int, track_seed: int) -> str:
  rng = np.random.default_rng(track_seed)
  artist = "Synthetic Artist" if split == "train" else "Synthetic Test Artist"
  title = f"{_ADJ[rng.integers(len(_ADJ))]} {_NOUN[rng.integers(len(_NOUN))]}"
  return f"{artist} {index + 1:02d} - {title}"


def _wav_complete(folder: pathlib.Path, frames: int) -> bool:
  try:
    return all((i := audio.audio_info(folder / f"{k}.wav")).frames == frames and i.channels == 2
               and i.rate == SAMPLE_RATE for k in ("mixture",) + stems_lib.STEMS)
  except audio.AudioError:  # missing or unreadable file
    return False


def _write_wavs(folder: pathlib.Path, tracks: dict[str, np.ndarray]) -> None:
  """Writes the track into a hidden temporary folder, then renames it (replacing an
  outdated or incomplete earlier version): complete or absent."""
  names = {f"{k}.wav" for k in ("mixture",) + stems_lib.STEMS}
  with files.atomic_path(folder, ours=lambda f: {p.name for p in f.iterdir()} <= names) as temp:
    temp.mkdir()
    for k in ("mixture",) + stems_lib.STEMS:
      audio.write_audio(temp / f"{k}.wav", tracks[k], SAMPLE_RATE, fmt="wav16")


def _write_stem_file(path: pathlib.Path, tracks: dict[str, np.ndarray]) -> None:
  audio.write_stem_file(path, np.stack([tracks[k] for k in stems_lib.STEM_FILE_STREAMS]),
                        SAMPLE_RATE, list(stems_lib.STEM_FILE_STREAMS))


def write_corpus(root: str | os.PathLike, num_train: int, num_test: int, seconds: float,
                 seed: int, stems: bool = False) -> list[pathlib.Path]:
  """Write num_train + num_test tracks under root/{train,test} in the MUSDB18-HQ wav layout,
  or as MUSDB18 .stem.mp4 files if `stems`. Tracks already complete are kept as they are.
  Returns the paths of all tracks of the corpus (track folders, or .stem.mp4 files)."""
  if isinstance(num_train, bool) or not isinstance(num_train, (int, np.integer)) or num_train < 1:
    raise ValueError(f"number of train tracks must be a positive integer, got {num_train!r}")
  if isinstance(num_test, bool) or not isinstance(num_test, (int, np.integer)) or num_test < 0:
    raise ValueError(f"number of test tracks must be a non-negative integer, got {num_test!r}")
  try:
    ok = bool(np.isfinite(float(seconds)) and float(seconds) > 0)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"seconds must be a positive number, got {seconds!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  seconds = float(seconds)
  frames = int(round(seconds * SAMPLE_RATE))
  paths = []
  for split, count in (("train", int(num_train)), ("test", int(num_test))):
    folder = pathlib.Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
      tseed = _track_seed(int(seed), split, i)
      name = _track_name(split, i, tseed)
      path = folder / (name + ".stem.mp4" if stems else name)
      files.remove_stale_parts(path)  # left behind by a killed run
      if not (path.is_file() if stems else _wav_complete(path, frames)):
        (_write_stem_file if stems else _write_wavs)(path, make_track(tseed, seconds))
      paths.append(path)
  return paths
