"""Source names and how they combine (`stems.py`), without a model or a file: the
rule that separation's stem layouts, prepared datasets and evaluation references share
(`test_separator`, `test_prepare` and `test_evaluate` check it through them)."""

import numpy as np
import pytest

from waveunet_jax import stems

FOUR = ("bass", "drums", "other", "vocals")


def test_derived_names_are_sums_of_the_sources():
  assert stems.parts("vocals", FOUR) == ("vocals",)
  assert stems.parts("accompaniment", FOUR) == ("bass", "drums", "other")
  assert stems.parts("no_drums", FOUR) == ("bass", "other", "vocals")
  assert stems.derivable(FOUR) == ["accompaniment", "no_bass", "no_drums", "no_other",
                                   "no_vocals"]
  assert stems.derivable(("vocals",)) == []  # one source derives nothing
  # A model that already separates accompaniment does not derive it again.
  assert stems.derivable(("accompaniment", "vocals")) == ["no_accompaniment", "no_vocals"]
  with pytest.raises(ValueError, match=r"'piano' is not one of the sources \(bass, drums, "
                                       r"other, vocals\) nor derived from them"):
    stems.parts("piano", FOUR)
  with pytest.raises(ValueError, match=r"nor derived from them \(none\)"):
    stems.parts("accompaniment", ("vocals",))


def test_layouts_are_checked_and_parsed():
  assert stems.check(["vocals", "accompaniment"], FOUR) == ("vocals", "accompaniment")
  for bad, reason in ((["piano"], "'piano' is not one of the sources"),
                      (["vocals", "vocals"], "named twice"), ([], "no stems")):
    with pytest.raises(ValueError, match=reason):
      stems.check(bad, FOUR)
  assert stems.parse(None, FOUR) == stems.parse("", FOUR) == FOUR
  assert stems.parse(" vocals, no_vocals ,", FOUR) == ("vocals", "no_vocals")


def test_combining_sums_the_parts_in_every_form():
  rng = np.random.default_rng(0)
  sources = {name: rng.standard_normal((5, 2)).astype(np.float32) for name in FOUR}
  out = stems.combine(sources, ["vocals", "accompaniment", "no_bass"])
  assert list(out) == ["vocals", "accompaniment", "no_bass"]
  assert out["vocals"] is sources["vocals"]
  np.testing.assert_allclose(out["accompaniment"],
                             sources["bass"] + sources["drums"] + sources["other"], atol=1e-6)
  np.testing.assert_allclose(out["no_bass"] + sources["bass"], sum(sources.values()), atol=1e-6)
  block = np.stack([sources[name] for name in FOUR], axis=1)  # [n, sources, channels]
  assert stems.combine_stacked(block, FOUR, FOUR) is block
  stacked = stems.combine_stacked(block, FOUR, ["accompaniment", "vocals"])
  assert stacked.shape == (5, 2, 2)
  np.testing.assert_allclose(stacked[:, 0], out["accompaniment"], atol=1e-6)
  np.testing.assert_array_equal(stacked[:, 1], sources["vocals"])


def test_extra_stems_of_a_multitrack_count_as_other():
  found = ["vocals", "drums", "bass", "other", "piano", "strings"]
  assert stems.holds("piano") == ("other",) and stems.holds("bass") == ("bass",)
  assert stems.multitrack_parts("other", found) == ("other", "piano", "strings")
  assert stems.multitrack_parts("accompaniment", found) == (
      "drums", "bass", "other", "piano", "strings")
  assert stems.multitrack_parts("no_drums", found) == (
      "vocals", "bass", "other", "piano", "strings")
  assert stems.multitrack_parts("other", ["piano"]) == ("piano",)  # no other.wav: a piano is
  assert stems.multitrack_parts("vocals", ["piano"]) == ()
  ones = {name: np.full((3, 2), i + 1.0, np.float32) for i, name in enumerate(found)}
  combined = stems.combine_multitrack(ones, ["other", "vocals"])
  np.testing.assert_array_equal(combined["other"], np.full((3, 2), 4 + 5 + 6))
  np.testing.assert_array_equal(combined["vocals"], ones["vocals"])
  with pytest.raises(ValueError, match=r"^no vocals for the source 'vocals'$"):
    stems.combine_multitrack({"piano": ones["piano"]}, ["vocals"])


def test_an_accompaniment_stem_is_the_accompaniment_whole():
  # A stem named after a derived source holds its stems mixed; instrumental is an alias.
  for name in ("accompaniment", "instrumental", "no_vocals"):
    assert stems.holds(name) == ("drums", "bass", "other")
    assert stems.multitrack_parts("accompaniment", ["vocals", name]) == (name,)
    assert stems.multitrack_parts("vocals", ["vocals", name]) == ("vocals",)
    # Its drums cannot be taken apart from its bass.
    assert stems.multitrack_parts("drums", ["vocals", name]) == ()
  assert stems.holds("no_drums") == ("vocals", "bass", "other")
  # With the accompaniment's own stems beside it, it is a part of the accompaniment too.
  assert stems.multitrack_parts("accompaniment", ["vocals", "drums", "instrumental"]) == (
      "drums", "instrumental")
  ones = {"vocals": np.ones((3, 2), np.float32), "instrumental": np.full((3, 2), 2.0, np.float32)}
  combined = stems.combine_multitrack(ones, ["vocals", "accompaniment"])
  np.testing.assert_array_equal(combined["accompaniment"], ones["instrumental"])
  # A stem that holds parts of several sources goes to none of them.
  four = ("vocals", "drums", "bass", "other")
  assert stems.split_across(["vocals", "drums", "bass", "other", "accompaniment"], four) == {
      "accompaniment": ("drums", "bass", "other")}
  assert stems.split_across(["vocals", "no_drums"], ["vocals", "accompaniment"]) == {
      "no_drums": ("vocals", "accompaniment")}
  assert stems.split_across(["vocals", "accompaniment"], ["vocals", "accompaniment"]) == {}
  assert stems.split_across(["vocals", "bass"], ["vocals", "drums"]) == {}  # needed by none
  assert stems.describe_stems(["vocals", "instrumental", "piano"], ".wav") == (
      "vocals.wav, instrumental.wav (drums + bass + other), piano.wav")
  assert stems.describe_stems([]) == "no stem"


def test_what_a_multitrack_misses_is_said_in_its_files_names():
  assert stems.describe_missing("vocals", ".wav") == "no vocals.wav"
  assert stems.describe_missing("no_other", ".wav") == "none of vocals.wav, drums.wav, bass.wav"
  assert stems.describe_missing("other", ".wav") == (
      "no other.wav nor any stem beyond vocals.wav, drums.wav, bass.wav, other.wav")
  assert stems.describe_missing("accompaniment", ".wav") == "no stem but vocals.wav"


def test_the_default_residual_source_is_where_a_listener_expects_the_rest():
  assert stems.default_residual_source(("vocals", "accompaniment")) == "accompaniment"
  assert stems.default_residual_source(FOUR) == "other"
  assert stems.default_residual_source(("drums", "bass")) == "bass"
