"""The compile cache of the C models: private to its user, and no library loaded that its
record does not vouch for (a planted or changed library is rebuilt, never run)."""

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch

from ptqlib.deploy.c_cache import CACHE_ENVIRONMENT, cache_directory, record_path
from ptqlib.deploy.c_runtime import compile_library, find_compiler, load_c_model
from ptqlib.errors import InputError

pytestmark = pytest.mark.skipif(
    not any(shutil.which(name) for name in ("cc", "gcc", "clang"))
    and os.environ.get("CI", "").lower() != "true",
    reason="no C compiler (install gcc); CI=true makes this fail",
)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENVIRONMENT, str(directory))
    return directory


def test_cache_is_created_private(private_cache):
    assert cache_directory() == private_cache
    assert private_cache.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("problem", ["mode", "owner", "symlink", "open parent"])
def test_a_cache_others_could_write_is_refused(private_cache, tmp_path, problem):
    if problem == "open parent":
        open_parent = tmp_path / "open"
        open_parent.mkdir()
        os.chmod(open_parent, 0o777)
        os.environ[CACHE_ENVIRONMENT] = str(open_parent / "cache")
        message = "which others may write into"
    elif problem == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        private_cache.symlink_to(target)
        message = "is not a directory"
    else:
        private_cache.mkdir(mode=0o700)
        if problem == "mode":
            os.chmod(private_cache, 0o755)
            message = "has mode 755"
        else:
            if os.getuid() != 0:
                pytest.skip("giving a directory to another user needs root")
            os.chown(private_cache, 65534, 65534)
            message = "belongs to user id 65534"
    with pytest.raises(InputError, match=message):
        cache_directory()


def test_a_planted_library_is_never_loaded(private_cache, simplenet_c, tmp_path):
    """Replace the cached library by one whose forward writes 42 everywhere: the next load
    rebuilds it (its bytes no longer hash to the record) and gives ptqlib's integers; a
    library without a record, or a record for another source, is rebuilt too."""
    library = compile_library(simplenet_c["int8_dir"], "portable")
    genuine = library.read_bytes()
    planted_source = tmp_path / "planted.c"
    planted_source.write_text(
        "#include <stdint.h>\n"
        "void simplenet_int8_forward(const uint8_t *in, uint8_t *out, int32_t n)\n"
        "{ for (int32_t i = 0; i < 10 * n; i++) out[i] = 42; (void)in; }\n"
    )
    planted = tmp_path / "planted.so"
    subprocess.run(
        [find_compiler(), "-shared", "-fPIC", "-o", str(planted), str(planted_source)],
        check=True, timeout=120,
    )  # fmt: skip
    pixels = torch.zeros(3, 784, dtype=torch.uint8)
    expected = simplenet_c["int8"].quantized_logits(pixels)
    record = json.loads(record_path(library).read_text())
    for tamper in ("library", "no record", "other source"):
        # As an attacker would (and as the cache itself does): a new file renamed over the
        # old one. Writing into a library that is loaded would crash this process.
        shutil.copy(planted, tmp_path / "copy.so")
        os.replace(tmp_path / "copy.so", library)
        if tamper == "no record":
            record_path(library).unlink()
        elif tamper == "other source":
            forged = {**record, "source_digest": "0" * 64}
            forged["library_sha256"] = hashlib.sha256(planted.read_bytes()).hexdigest()
            record_path(library).write_text(json.dumps(forged))
        c_model = load_c_model(simplenet_c["int8_dir"], "portable")
        assert c_model.library_path == library
        assert torch.equal(c_model.quantized_logits(pixels), expected)
        assert library.read_bytes() == genuine
