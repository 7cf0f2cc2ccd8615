"""What a stage reads from the run folder: a missing input names the command that makes it."""

from __future__ import annotations

import re

import pytest

from saelab.errors import SaelabError
from saelab.pipeline import inputs
from saelab.run import RunFolder


def test_a_missing_store_or_codes_names_the_stage_to_run(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(
        SaelabError, match=re.escape(f"{missing} has no activation store") + ".*extract --run"
    ):
        inputs.activations(RunFolder(missing))
    with pytest.raises(SaelabError, match=re.escape(f"extract --run {missing}` first")):
        inputs.activations(RunFolder(missing))
    with pytest.raises(SaelabError, match=re.escape(f"encode --run {missing}` first")):
        inputs.codes(RunFolder(missing))
    with pytest.raises(SaelabError, match="saelab extract --generate N --run"):
        inputs.traces(RunFolder(missing))
