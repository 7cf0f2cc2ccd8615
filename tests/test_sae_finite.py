"""NaN or infinite SAE weights are refused in every format, naming the file; codes that are
not finite are refused on write; an SAE whose codes are all empty is warned about."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.errors import SaelabError
from saelab.sae.formats import FORMATS, load_local
from saelab.store.codes import CodesWriter, open_codes
from tests.test_sae_formats import ROUND_TRIPS, native, rewrite

HOOK = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("fmt", [f.name for f in FORMATS])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, fmt, bad):
    arch = next(a for f, a in ROUND_TRIPS if f == fmt)
    sae = native(tmp_path, arch)
    with torch.no_grad():
        sae.W_enc[3, 5] = bad
    path = rewrite(fmt, sae, tmp_path / "out")
    with pytest.raises(SaelabError, match="NaN or infinite") as e:
        load_local(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg


def test_a_finite_sae_still_loads_in_every_format(tmp_path):
    for k, (fmt, arch) in enumerate(ROUND_TRIPS):
        sae = native(tmp_path / str(k), arch)
        assert load_local(rewrite(fmt, sae, tmp_path / str(k) / "out")).cfg.d_sae == sae.cfg.d_sae


def _writer(run: Path, values: str = "float32") -> CodesWriter:
    return CodesWriter(run, HOOK, {"d_sae": 8, "positions": "last", "values": values})


def _shard(w: CodesWriter, shard: int, values, indices=(1, 2)) -> None:
    n = len(values)
    w.write_shard(
        shard,
        indptr=np.array([0, n]),
        indices=np.array(indices[:n]),
        values=np.asarray(values, dtype=np.float32),
        prompt_index=np.array([shard]),
        row_offsets=np.array([0, 1]),
    )


@pytest.mark.parametrize("values", [[np.nan, 1.0], [1.0, np.inf]])
def test_non_finite_codes_are_refused_on_write(tmp_path, values):
    w = _writer(tmp_path)
    with pytest.raises(SaelabError, match="NaN or infinite") as e:
        _shard(w, 0, values)
    assert HOOK in str(e.value) and not list((tmp_path / "codes" / HOOK).glob("*.safetensors"))


def test_float16_overflow_in_codes_is_refused(tmp_path):
    with pytest.raises(SaelabError, match="after storing as float16"):
        _shard(_writer(tmp_path, "float16"), 0, [1e6])


def test_all_empty_codes_are_warned_about_once(tmp_path, capsys):
    w = _writer(tmp_path)
    _shard(w, 0, [])
    _shard(w, 1, [])
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "all empty" in err and HOOK in err
    _shard(w, 2, [0.5])
    assert capsys.readouterr().err == ""
    assert open_codes(tmp_path)[HOOK].matrix().nnz == 1
