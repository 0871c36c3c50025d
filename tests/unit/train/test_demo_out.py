"""`hermes-sft demo --out DIR` replaces only a folder an earlier demo wrote (it used to rmtree any DIR)."""

from __future__ import annotations

import argparse

import pytest

from data_recipes.outdir import OutputRefused, check_out, write_marker
from train.demo import DEMO_ENTRIES, run


def test_demo_refuses_a_folder_it_did_not_write_and_deletes_nothing(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(OutputRefused, match="not written by hermes-sft"):
        run(argparse.Namespace(out=str(user), steps=1, nproc=1, lora=False))
    assert (user / "notes.txt").read_text() == "keep me"


def test_a_half_finished_demo_folder_is_still_its_own(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    write_marker(demo, "demo", DEMO_ENTRIES)
    (demo / "data").mkdir()  # stopped after the first stage: the marker already names every stage folder
    assert check_out(demo, overwrite=True, command="demo") == demo.resolve()
