"""Reading tracks and choosing the validation split (`tracks`), without building a
dataset: `test_prepare` covers them through `prepare`."""

import logging
import pathlib

import pytest

from waveunet_jax.data import tracks


def names(found) -> list:
  return [t.name for t in found]


def track_folders(root: pathlib.Path, names) -> None:
  for name in names:
    (root / name).mkdir(parents=True)


def test_without_named_validation_a_tenth_is_held_out_by_name(tmp_path, caplog):
  # absl's logger itself: an earlier test in this process may have left it at WARNING.
  caplog.set_level(logging.INFO, logger="absl")
  songs = [f"Artist {i:02d} - Song" for i in range(30)]
  track_folders(tmp_path / "a" / "train", songs)
  track_folders(tmp_path / "b" / "train", songs[::-1])
  a = tracks.split_tracks(tmp_path / "a", True, None)
  # The names alone decide (sha256), not the order of the folders: the same everywhere.
  held_out = ["Artist 06 - Song", "Artist 10 - Song", "Artist 13 - Song"]
  assert names(a["valid"]) == names(tracks.split_tracks(tmp_path / "b", True, None)["valid"]) \
      == held_out
  assert names(a["train"]) == [t for t in songs if t not in held_out]
  assert (f"validation: 3 of the 30 tracks of {tmp_path / 'a' / 'train'}, about 10% chosen by a "
          f"hash of their names (no --valid_tracks, no {tmp_path / 'a' / 'valid'}/, no track of "
          "MUSDB18): 'Artist 06 - Song', 'Artist 10 - Song', 'Artist 13 - Song'") in caplog.text
  # Adding tracks keeps the earlier choice here; two tracks give one of each.
  track_folders(tmp_path / "a" / "train", [f"Artist {i:02d} - Song" for i in range(30, 40)])
  assert set(held_out) < set(names(tracks.split_tracks(tmp_path / "a", True, None)["valid"]))
  track_folders(tmp_path / "c" / "train", songs[:2])
  two = tracks.split_tracks(tmp_path / "c", True, None)
  assert len(two["train"]) == len(two["valid"]) == 1


@pytest.mark.parametrize("lines,message", [
    ("../songs/A - a\n{songs}/Z - z valid\n",
     "{listing}:2: {songs}/Z - z: no such folder; a line names a track folder of wav stems "
     "(absolute, or relative to {base}), then optionally its split"),
    ("# a comment\n../songs/A - a tarin\n",
     "{listing}:2: unknown split 'tarin' for {base}/../songs/A - a; use train, valid or test"),
    ("../songs/A - a\n\n{songs}/A - a valid\n",
     "{listing}:3: a second track named 'A - a' (the first is on line 1); a track is named by "
     "its folder, and names must differ"),
    ("../songs/A - a valid\n",
     "--tracks_file={listing}: no training track (a line with no split or with train); write "
     "one track folder per line"),
])
def test_tracks_file_bad_lines_are_named(tmp_path, lines, message):
  songs = tmp_path / "songs"
  (songs / "A - a").mkdir(parents=True)
  listing = tmp_path / "lists" / "tracks.txt"
  listing.parent.mkdir()
  listing.write_text(lines.format(songs=songs))
  with pytest.raises(tracks.DataError) as error:
    tracks.split_tracks(None, True, None, tracks_file=listing)
  assert str(error.value) == message.format(listing=listing, songs=songs, base=listing.parent)
