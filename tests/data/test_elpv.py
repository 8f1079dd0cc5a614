"""edgekit.data.elpv: the labelling rule (pure function) and a real conversion through the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.data.dataset import scan_dataset
from edgekit.data.elpv import split_elpv, write_elpv_dataset
from edgekit.data.images import read_image
from edgekit.errors import ConfigError, DataError

THIRD, TWO_THIRDS = 1.0 / 3.0, 0.6666666666666666  # the values stored in the package's labels.csv


def test_rule_counts_on_a_tiny_label_array() -> None:
    probs = np.array([0.0, 1.0, THIRD, TWO_THIRDS, 0.0, 0.0, 0.0, 1.0, 0.0, THIRD, TWO_THIRDS, 0.0])
    types = np.array(["mono"] * 8 + ["poly"] * 4)
    s = split_elpv(probs, types, "mono", seed=0)
    # mono normals 0, 4, 5, 6 → 3 train + 1 test; 2/3 counts as defect (the "≥ 0.67" rule means 2/3)
    assert len(s.train_good) == 3 and len(s.test_good) == 1
    assert sorted(s.train_good + s.test_good) == [0, 4, 5, 6]
    assert s.test_defect == [1, 3, 7] and s.excluded == [2]
    p = split_elpv(probs, types, "poly", seed=0)
    assert sorted(p.train_good + p.test_good) == [8, 11] and p.test_defect == [10] and p.excluded == [9]
    # deterministic per seed, different across seeds (with enough normals)
    many = np.zeros(40)
    t = np.array(["mono"] * 40)
    assert split_elpv(many, t, "mono", 1) == split_elpv(many, t, "mono", 1)
    assert split_elpv(many, t, "mono", 1).test_good != split_elpv(many, t, "mono", 2).test_good
    assert len(split_elpv(many, t, "mono", 1).test_good) == 10
    with pytest.raises(ConfigError, match="valid: mono, poly"):
        split_elpv(probs, types, "cdte")


@pytest.fixture()
def elpv_subset(tmp_path: Path) -> Path:
    """A labels file in the package's format over 8 real cells (copied from the installed package)."""
    utils = pytest.importorskip("elpv_dataset.utils")
    pkg = Path(utils.__file__).parent / "data"
    rows = [r.split() for r in (pkg / "labels.csv").read_text().splitlines() if r.strip()]
    mono = [r for r in rows if r[2] == "mono"]
    pick = [r for r in mono if float(r[1]) == 0.0][:4] + [r for r in mono if float(r[1]) == 1.0][:2]
    pick += [r for r in mono if abs(float(r[1]) - THIRD) < 1e-6][:1] + [r for r in rows if r[2] == "poly"][:1]
    sub = tmp_path / "elpv_src"
    (sub / "images").mkdir(parents=True)
    for r in pick:
        shutil.copy(pkg / r[0], sub / r[0])
    (sub / "labels.csv").write_text("".join(f"{r[0]}  {r[1]}  {r[2]}\n" for r in pick))
    return sub / "labels.csv"


def test_convert_subset_through_package_loader(tmp_path: Path, elpv_subset: Path) -> None:
    out = tmp_path / "mono"
    summary = write_elpv_dataset(out, "mono", seed=0, labels_csv=str(elpv_subset))
    assert "3 train/good" in summary and "1 test/good" in summary and "2 test/defect" in summary
    assert "1 excluded" in summary and "no masks" in summary
    idx = scan_dataset(out, require_test=True)
    assert len(idx.train_good) == 3 and idx.n_test_good == 1 and idx.n_test_defect == 2
    assert idx.defect_types == ["defect"] and not idx.has_masks
    assert not (out / "ground_truth").exists()
    img = read_image(idx.train_good[0])
    assert img.shape == (300, 300, 3) and img.std() > 0
    assert all(p.name.startswith("cell") for p in idx.train_good)  # original names kept
    # rerun over its own output is allowed; a foreign folder is refused
    write_elpv_dataset(out, "mono", seed=0, labels_csv=str(elpv_subset))
    assert len(scan_dataset(out).train_good) == 3
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_elpv_dataset(tmp_path / "foreign", "mono", labels_csv=str(elpv_subset))


@pytest.mark.slow
def test_full_mono_conversion_counts(tmp_path: Path) -> None:
    pytest.importorskip("elpv_dataset")
    r = CliRunner().invoke(main, ["data", "elpv", str(tmp_path / "m"), "--type", "mono"])
    assert r.exit_code == 0, r.output
    idx = scan_dataset(tmp_path / "m", require_test=True)
    # package labels: mono has 588 cells at p=0, 56 at 2/3, 313 at 1, 117 at 1/3
    assert (len(idx.train_good), idx.n_test_good, idx.n_test_defect) == (441, 147, 369)
    assert "117 excluded" in r.output


def test_missing_package_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # a None entry in sys.modules makes `import` fail exactly as on a machine without the package
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    with pytest.raises(DataError, match=r"pip install elpv-dataset"):
        write_elpv_dataset(tmp_path / "x", "mono")
