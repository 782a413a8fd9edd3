"""The integrity check Ricker et al. publish for their dataset, reproduced in Python.

The authors' recipe is the shell pipeline::

    find DIR -type f -print0 | sort -z | xargs -0 sha1sum | cut -d " " -f 1 | sha1sum

:func:`tree_digest` computes the same hex digest without a shell. The points where
it is easy to get wrong:

* ``find DIR -type f`` lists regular files only (symlinks are neither listed nor
  followed), each path spelled as ``DIR`` was given, then ``/`` (none added when
  ``DIR`` already ends with one), then the path below it.
* ``sort -z`` compares those whole path strings. Its order depends on the locale:
  under ``en_US.UTF-8`` it ignores case and punctuation at first, under ``LC_ALL=C``
  it compares bytes. The published digests were made with byte order, and this
  function always uses byte order (``LC_ALL=C``), whatever the user's locale.
  To check by hand, run the pipeline as ``LC_ALL=C find ... | LC_ALL=C sort -z ...``.
  Byte order of whole paths is not the order of a per-folder walk: ``a-b`` sorts
  before ``a/x`` because ``-`` (0x2d) < ``/`` (0x2f).
* ``sha1sum`` prints ``<hex>  <name>``, but escapes a name that holds a backslash,
  a newline or (coreutils >= 9) a carriage return and then starts the line with
  ``\\``, so ``cut`` keeps ``\\<hex>``. This is reproduced.
* The final ``sha1sum`` hashes the concatenation of ``"<hex>\\n"`` lines. With no
  files at all, ``xargs`` still runs ``sha1sum`` once on empty input, which
  contributes the sha1 of the empty string as the only line.

One deliberate difference: if ``DIR`` itself is a symlink to a folder, ``find DIR``
would not descend into it; this function does (as ``find DIR/`` would).
"""

from __future__ import annotations

import hashlib
import os
import stat

from bilora.atomic import file_hexdigest
from bilora.errors import DataError

#: Published digest of ``diffusion_model_deepfakes_lsun_bedroom/test/`` (Ricker et al.).
RICKER_TEST_DIGEST = "68bd7326113b9cde3cd4eadf1e10e5fca77df751"
#: Published digest of ``train/`` after the real halves are rebuilt from LSUN.
RICKER_TRAIN_DIGEST = "10fd255e5669e76b4e9bde93f672733a5dfa92fa"
#: Published digest of ``val/`` after the real halves are rebuilt from LSUN.
RICKER_VAL_DIGEST = "c836fe592e49ab630ccc30675694ab32aff8e1a3"
#: The digests by split name.
RICKER_DIGESTS = {"test": RICKER_TEST_DIGEST, "train": RICKER_TRAIN_DIGEST,
                  "val": RICKER_VAL_DIGEST}

_EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()
_ESCAPED = (b"\\", b"\n", b"\r")


class IntegrityError(DataError):
    """A folder's digest differs from the expected one."""


def list_files_like_find(directory: str | os.PathLike) -> list[bytes]:
    """Paths of the regular files under ``directory``, as ``find DIR -type f`` prints them,
    sorted bytewise as ``LC_ALL=C sort -z`` sorts them."""
    top = os.fsencode(directory)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"not a folder: {os.fsdecode(top)}")
    prefix = top if top.endswith(b"/") else top + b"/"
    found: list[bytes] = []
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(prefix + rel if rel else top) as it:
            for entry in it:
                sub = rel + entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    stack.append(sub + b"/")
                elif stat.S_ISREG(mode):
                    found.append(prefix + sub)
    found.sort()
    return found


def tree_digest(directory: str | os.PathLike) -> str:
    """Hex digest of ``find DIR -type f -print0 | sort -z | xargs -0 sha1sum | cut -d " " -f 1
    | sha1sum`` under ``LC_ALL=C`` (see the module docstring for the fine print)."""
    outer = hashlib.sha1()
    paths = list_files_like_find(directory)
    if not paths:
        outer.update(f"{_EMPTY_SHA1}\n".encode())
    for path in paths:
        escaped = any(ch in path for ch in _ESCAPED)
        line = ("\\" if escaped else "") + file_hexdigest(path, "sha1") + "\n"
        outer.update(line.encode())
    return outer.hexdigest()


def digest_mismatch(directory: str | os.PathLike, got: str, expected: str) -> str | None:
    """None when ``got`` is ``expected``, else the message naming the folder and the recipe."""
    if got == expected.strip().lower():
        return None
    return (f"integrity check failed for {os.fsdecode(directory)}: digest {got}, expected "
            f"{expected.strip().lower()} (find DIR -type f -print0 | LC_ALL=C sort -z | "
            f"xargs -0 sha1sum | cut -d ' ' -f 1 | sha1sum)")


def check_tree_digest(directory: str | os.PathLike, expected: str) -> str:
    """Compute :func:`tree_digest` and raise IntegrityError naming the folder on mismatch."""
    got = tree_digest(directory)
    problem = digest_mismatch(directory, got, expected)
    if problem:
        raise IntegrityError(problem)
    return got
