"""tree_digest equals the authors' shell pipeline run with LC_ALL=C."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from bilora.data.integrity import (
    RICKER_DIGESTS,
    IntegrityError,
    check_tree_digest,
    list_files_like_find,
    tree_digest,
)

PIPELINE = 'find "$1" -type f -print0 | sort -z | xargs -0 sha1sum | cut -d " " -f 1 | sha1sum'
needs_shell = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("find", "sort", "xargs", "sha1sum", "cut")),
    reason="coreutils/findutils not available")


def _shell_digest(directory: str) -> str:
    env = dict(os.environ, LC_ALL="C")
    out = subprocess.run(["sh", "-c", PIPELINE, "sh", directory], env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.split()[0]


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "ds" / "test"
    names = [
        "ADM/00000001.png", "ADM/0000000a.png", "adm/b.png", "ADM-x/c.png", "ADM_x/d.png",
        "ADM.x/e.png", "Real/Zeta.png", "Real/alpha.png", "Real/_under.png", "Real/-dash.png",
        "Real/sub/deep/f.png", "a-b", "a/x", "B", "b", "back\\slash.png",
        "Real/caf\u00e9.png", "Real/CAFE.png",
    ]
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"content {i}".encode() * (i + 1))
    (root / "empty-dir").mkdir()
    (root / "Real" / "link.png").symlink_to(root / "B")  # not a regular file: not listed
    return root


@needs_shell
@pytest.mark.parametrize("spelling", ["plain", "trailing-slash"])
def test_matches_shell_pipeline_in_c_locale(tree, spelling):
    d = str(tree) + ("/" if spelling == "trailing-slash" else "")
    assert tree_digest(d) == _shell_digest(d)


def test_order_is_bytewise_over_whole_paths(tree):
    rel = [p[len(os.fsencode(tree)) + 1:] for p in list_files_like_find(tree)]
    # '-' (0x2d) < '.' (0x2e) < '/' (0x2f) < '_' (0x5f); upper case before lower case
    assert rel.index(b"ADM-x/c.png") < rel.index(b"ADM.x/e.png") < rel.index(b"ADM/00000001.png")
    assert rel.index(b"ADM/0000000a.png") < rel.index(b"ADM_x/d.png") < rel.index(b"adm/b.png")
    assert rel.index(b"a-b") < rel.index(b"a/x")
    assert rel.index(b"B") < rel.index(b"b")
    assert b"Real/link.png" not in rel
    assert rel == sorted(rel)


@needs_shell
def test_escaped_names_and_empty_tree_match_shell(tmp_path):
    (tmp_path / "e").mkdir()
    assert tree_digest(tmp_path / "e") == _shell_digest(str(tmp_path / "e"))
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "new\nline").write_bytes(b"x")
    (tmp_path / "n" / "plain").write_bytes(b"y")
    assert tree_digest(tmp_path / "n") == _shell_digest(str(tmp_path / "n"))


def test_digest_changes_with_a_byte_and_check_names_folder(tree):
    before = tree_digest(tree)
    assert check_tree_digest(tree, before.upper()) == before
    (tree / "Real" / "alpha.png").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match=rf"{tree}.*expected {before}"):
        check_tree_digest(tree, before)


def test_published_digests():
    assert RICKER_DIGESTS == {"test": "68bd7326113b9cde3cd4eadf1e10e5fca77df751",
                              "train": "10fd255e5669e76b4e9bde93f672733a5dfa92fa",
                              "val": "c836fe592e49ab630ccc30675694ab32aff8e1a3"}


def _has_locale(name: str) -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return name.lower().replace("-", "") in out.lower().replace("-", "")


@needs_shell
@pytest.mark.skipif(not _has_locale("en_US.utf8"), reason="en_US.UTF-8 locale not installed")
def test_user_locale_would_change_the_shell_digest(tree):
    """Why the C locale matters: under en_US.UTF-8, sort -z orders the paths differently."""
    env = dict(os.environ, LC_ALL="en_US.UTF-8")
    out = subprocess.run(["sh", "-c", PIPELINE, "sh", str(tree)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()[0]
    assert out != tree_digest(tree)
