"""The real-data `bilora` subcommands, run as a user or a Snakemake rule would."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import lmdb
import pandas as pd
import pytest
from PIL import Image

from bilora.cli import main
from bilora.data.integrity import tree_digest

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path | None, seed: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 10, 200)).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_tree_digest_ok_mismatch_and_out(tmp_path, capsys):
    _png(tmp_path / "d" / "a.png")
    digest = tree_digest(tmp_path / "d")
    assert main(["tree-digest", str(tmp_path / "d"), "--expect", digest,
                 "--out", str(tmp_path / "digest.txt")]) == 0
    assert digest in capsys.readouterr().out
    assert (tmp_path / "digest.txt").read_text() == digest + "\n"
    assert main(["tree-digest", str(tmp_path / "d"), "--expect", "ricker-test",
                 "--out", str(tmp_path / "bad.txt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bilora tree-digest: error: integrity check failed")
    assert "68bd7326113b9cde3cd4eadf1e10e5fca77df751" in err and err.count("\n") == 1
    assert str(tmp_path / "d") in err and not (tmp_path / "bad.txt").exists()
    assert main(["tree-digest", str(tmp_path / "d"), "--expect", "ricker-test", "--warn-only",
                 "--out", str(tmp_path / "warn.txt")]) == 0
    assert "warning: integrity check failed" in capsys.readouterr().err
    assert (tmp_path / "warn.txt").read_text() == (
        f"{digest}  MISMATCH expected 68bd7326113b9cde3cd4eadf1e10e5fca77df751\n")


def test_tree_digest_exit_code_in_a_subprocess(tmp_path):
    _png(tmp_path / "d" / "a.png")
    proc = subprocess.run([sys.executable, "-m", "bilora.cli", "tree-digest",
                           str(tmp_path / "d"), "--expect", "0" * 40], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "bilora tree-digest: error: integrity check failed for" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_extract_writes_markers_and_refuses_escapes(tmp_path, capsys):
    good = tmp_path / "test.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("ds/test/Real/0.png", _png(None))
    done = tmp_path / "out" / "extract.done.json"
    assert main(["extract", "--archive", str(good), "--dest", str(tmp_path / "out"),
                 "--done", str(done)]) == 0
    assert (tmp_path / "out/ds/test/Real/0.png").exists()
    fetched = tmp_path / "fetch.done.json"
    readme = tmp_path / "README.md"
    readme.write_text("not an archive")
    fetched.write_text(json.dumps({"files": [{"path": str(good)}, {"path": str(readme)}]}))
    assert main(["extract", "--from-fetch", str(fetched), "--dest", str(tmp_path / "out3")]) == 0
    assert (tmp_path / "out3/ds/test/Real/0.png").exists()
    assert (tmp_path / "out/.bilora-extract/test.zip.done.json").exists()
    assert json.loads(done.read_text())["archives"] == [str(good.resolve())]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.png", b"x")
    assert main(["extract", "--archive", str(evil), "--dest", str(tmp_path / "out2")]) == 1
    assert re.match(r"bilora extract: error: .*evil\.zip: entry '\.\./escape\.png'",
                    capsys.readouterr().err)
    assert not (tmp_path / "escape.png").exists()


def test_fetch_zenodo_with_archives_dir_offline(tmp_path, capsys):
    have = tmp_path / "mine"
    data = {"test.zip": b"t" * 100, "train.zip": b"r" * 50}
    have.mkdir()
    for k, v in data.items():
        (have / k).write_bytes(v)
    base = "http://127.0.0.1:9"  # nothing listens: any network use would fail
    lock = tmp_path / "ricker.lock.json"
    lock.write_text(json.dumps({"version": 1, "base_url": base, "record": "7528113",
                                "files": [{"key": k, "size": len(v),
                                           "md5": hashlib.md5(v).hexdigest(),
                                           "url": f"{base}/files/{k}"}
                                          for k, v in data.items()]}))
    dest = tmp_path / "archives"
    assert main(["fetch-zenodo", "--base-url", base, "--record", "7528113", "--lock",
                 str(lock), "--dest", str(dest), "--archives-dir", str(have),
                 "--files", "test*", "--quiet"]) == 0
    done = json.loads((dest / "fetch.done.json").read_text())
    assert [f["key"] for f in done["files"]] == ["test.zip"]
    assert (dest / "test.zip").read_bytes() == data["test.zip"]
    # the marker feeds `extract --from-fetch`; "test.zip" here is not a real archive
    assert main(["extract", "--from-fetch", str(dest / "fetch.done.json"), "--dest",
                 str(tmp_path / "raw")]) == 1
    assert "no archives to extract" in capsys.readouterr().err
    lock.unlink()
    assert main(["fetch-zenodo", "--base-url", base, "--record", "7528113", "--lock", str(lock),
                 "--dest", str(dest), "--archives-dir", str(have), "--retries", "0",
                 "--backoff-factor", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{base}/api/records/7528113" in err and f"no lock file at {lock}" in err


def test_rebuild_lsun_real(tmp_path):
    path = tmp_path / "lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(5):
            txn.put(f"k{i}".encode(), _png(None, i, (12, 8)))
    env.close()
    dest = tmp_path / "ds"
    assert main(["rebuild-lsun-real", "--lmdb", str(path), "--dest", str(dest), "--skip", "1",
                 "--train-per-generator", "1", "--val-per-generator", "1", "--size", "8",
                 "--generators", "ADM", "DDPM", "--quiet"]) == 0
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == [
        "train/ADM/0_real/00000001.png", "train/DDPM/0_real/00000003.png",
        "val/ADM/0_real/00000002.png", "val/DDPM/0_real/00000004.png"]
    assert (dest / "lsun_real.done.json").exists()
    assert main(["rebuild-lsun-real", "--lmdb", str(path), "--dest", str(dest), "--skip", "1",
                 "--train-per-generator", "1", "--val-per-generator", "1", "--size", "8",
                 "--generators", "ADM", "DDPM", "--quiet", "--done",
                 str(tmp_path / "lsun.done")]) == 0
    assert json.loads((tmp_path / "lsun.done").read_text())["images"] == 4


def test_organize_ricker_and_genimage(tmp_path, capsys):
    ds = tmp_path / "data" / "ricker"
    root = ds / "raw" / "diffusion_model_deepfakes_lsun_bedroom"
    for i in range(2):
        _png(root / f"test/Real/{i}.png", i)
        for g in ("ADM", "LDM"):
            _png(root / f"test/{g}/{i}.png", i + 5)
    out = ds / "manifest.parquet"
    assert main(["organize", "--layout", "ricker", "--source", str(ds / "raw"),
                 "--dataset-dir", str(ds), "--generators", "ADM", "LDM", "--splits", "test",
                 "--max-rejected-fraction", "0.01", "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 8 and (ds / "rejects.csv").exists()
    assert df[df.label == 0].path.nunique() == 2  # the shared Real folder, listed per generator

    gi = tmp_path / "GenImage" / "glide"
    for split in ("train", "val"):
        _png(gi / split / "ai" / "a.png", 1)
        _png(gi / split / "nature" / "n.png", 2)
    (gi / "val" / "nature" / "broken.png").write_bytes(b"")
    out = tmp_path / "data" / "glide" / "manifest.parquet"
    args = ["organize", "--layout", "genimage", "--source", str(gi), "--dataset-dir",
            str(out.parent), "--generator", "GLIDE", "--split-map", "train=train,val=test",
            "--out", str(out), "--quiet", "--max-rejected-fraction"]
    assert main([*args, "0.1"]) == 1
    assert "data.max_rejected_fraction" in capsys.readouterr().err
    assert main([*args, "0.25"]) == 0
    df = pd.read_parquet(out)
    assert sorted(zip(df.split, df.label, strict=True)) == [
        ("test", 0), ("test", 1), ("train", 0), ("train", 1)]
    assert all(os.path.isabs(p) for p in df.path)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only user errors become one line; anything else is a bug and propagates."""
    import bilora.data.integrity as integrity

    def boom(directory):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(integrity, "tree_digest", boom)
    (tmp_path / "d").mkdir()
    with pytest.raises(ZeroDivisionError):
        main(["tree-digest", str(tmp_path / "d")])
