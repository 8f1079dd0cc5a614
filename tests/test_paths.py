"""File names that are not UTF-8 and paths given with .., symlinks or from another folder: stored,
hashed, shown and compared one way, end to end through train → evaluate → build → rescore."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.cli import main
from edgekit.paths import canonical, from_stored, shown, stored

from .conftest import TINY_RECIPE

NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)


@settings(max_examples=200, deadline=None)
@given(NAME_BYTES)
def test_stored_names_round_trip_and_encode_as_utf8(raw: bytes) -> None:
    p = os.fsdecode(raw)
    s = stored(p)
    s.encode("utf-8")  # JSON/SQLite/terminals take it
    assert os.fsencode(from_stored(s)) == raw
    shown(p).encode("utf-8")


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output + (repr(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else "")


def test_latin1_names_and_dotdot_paths_from_another_folder(tmp_path: Path, monkeypatch) -> None:
    """A Latin-1 file name from a Windows share in train/good and test/good; training through
    `sub/../data` from one folder; build, evaluate and rescore from another."""
    from edgekit.data.synth import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, kind="fabric", seed=0, n_train=12, n_test_good=4, n_test_defect=4, size=64)
    for sub, new in (("train/good", b"caf\xe9 1.png"), ("test/good", b"d\xe9faut.png")):
        first = sorted((data / sub).iterdir())[0]
        os.rename(os.fsencode(first), os.fsencode(data / sub) + b"/" + new)
    (tmp_path / "sub").mkdir()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_RECIPE), encoding="utf-8")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    code, out = _cli("train", "../tiny.yaml", "--data", "../sub/../data", "--out", "../run")
    assert code == 0, out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert all(Path(v).is_absolute() and ".." not in v for v in info["data"]["val_images"])
    assert info["data"]["dirs"] == [str(canonical(data))]

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out = _cli("build", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"))
    assert code == 0, out
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["models"]["fp32"]["parity"]["n_tiles"] > 0
    code, out = _cli("evaluate", str(tmp_path / "run"), "--data", str(data), "--report", "rep")
    assert code == 0 and "Traceback" not in out, out
    report = (tmp_path / "elsewhere" / "rep").read_text(encoding="utf-8")  # valid UTF-8, no lone surrogates
    assert "\udce9" not in report and "Traceback" not in report
    code, out = _cli("rescore", str(tmp_path / "run"))  # nothing changed: accepted
    assert code == 0 and "changed since" not in out, out


def test_build_never_passes_parity_over_no_tiles(tmp_path: Path, tiny_run: Path) -> None:
    """Held-out images gone: parity falls back to the training images (n_tiles > 0); the data
    gone as well: a one-line error, no bundle (never "max rel diff 0.0 over 0 tiles")."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    info["data"]["val_images"] = ["gone/a.png"]
    (run / "run.json").write_text(json.dumps(info))
    code, out = _cli("build", str(run), "--out", str(tmp_path / "b1"))
    assert code == 0, out
    assert json.loads((tmp_path / "b1" / "manifest.json").read_text())["models"]["fp32"]["parity"]["n_tiles"] > 0
    info["data"]["dirs"] = [str(tmp_path / "moved-away")]
    (run / "run.json").write_text(json.dumps(info))
    code, out = _cli("build", str(run), "--out", str(tmp_path / "b2"))
    assert code != 0 and len(out.strip().splitlines()) == 1 and "moved-away" in out
    assert not (tmp_path / "b2").exists()


@pytest.mark.parametrize("how", ["symlink", "relative"])
def test_dataset_hash_is_the_same_through_links_and_relative_paths(tmp_path: Path, how: str, monkeypatch) -> None:
    from edgekit.data.dataset import dataset_hash, list_images
    from edgekit.data.synth import write_synthetic_dataset

    data = tmp_path / "d"
    write_synthetic_dataset(data, kind="fabric", seed=1, n_train=4, n_test_good=1, n_test_defect=1, size=32)
    ref = dataset_hash(list_images(data / "train" / "good"))
    if how == "symlink":
        (tmp_path / "link").symlink_to(data)
        other = list_images(tmp_path / "link" / "train" / "good")
    else:
        monkeypatch.chdir(data / "train")
        other = list_images(Path("..") / "train" / "good")
    assert dataset_hash(other) == ref
