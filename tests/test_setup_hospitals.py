"""`data.hospitals`: a run of some of the source's hospitals gets exactly their records."""

import pytest

from fedlora_jax import data as D
from fedlora_jax.run import setup
from tests.run_fixtures import tiny_config


def test_data_hospitals_keeps_the_named_hospitals_with_their_records(tmp_path):
  every = tiny_config(str(tmp_path / "w"), str(tmp_path / "cache"))
  names = setup.hospital_names(every)
  full = setup.client_records(every, set(range(len(names))))
  some = tiny_config(str(tmp_path / "w"), str(tmp_path / "cache"),
                     **{"data.hospitals": (names[2], names[0])})
  assert setup.hospital_names(some) == [names[0], names[2]]  # source order, ids 0 and 1
  kept_names, train, test, shares = setup.client_records(some, {1})
  assert kept_names == [names[0], names[2]] and set(train) == set(test) == set(shares) == {1}
  assert train[1] == full[1][2] and test[1] == full[2][2] and shares[1] == full[3][2]
  bad = tiny_config(str(tmp_path / "w"), str(tmp_path / "cache"),
                    **{"data.hospitals": (names[0], "radiology")})
  with pytest.raises(setup.SetupError, match=r"unknown hospitals \['radiology'\]"):
    setup.hospital_names(bad)


def test_chapter_style_reaches_the_hospitals_records(tmp_path):
  titled = tiny_config(str(tmp_path / "w"), str(tmp_path / "cache"),
                       **{"data.chapter_style": "title"})
  labelled = tiny_config(str(tmp_path / "w"), str(tmp_path / "cache"),
                         **{"data.chapter_style": "label"})
  plain = setup.client_records(titled, {0})[1][0]
  short = setup.client_records(labelled, {0})[1][0]
  labels = D.chapter_options("label")
  assert [r.id for r in short] == [r.id for r in plain]
  assert all(r.options[r.answer] == labels[r.label] for r in short)
  assert all(p.options[p.answer] == D.chapter_names()[p.label] for p in plain)
  assert {r.answer_style for r in short} == {"option"} and {p.answer_style for p in plain} == {
      "letter"}
