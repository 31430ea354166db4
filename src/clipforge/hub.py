"""Pretrained weights by name: the download cache, verified URL downloads, and Hugging Face Hub folders.

- `cache_dir()`: `$CLIPFORGE_CACHE`, else `$XDG_CACHE_HOME/clipforge`, else `~/.cache/clipforge`.
- `download(url, sha256, ...)`: a file fetched once into the cache, its SHA-256 checked before it is
  moved into place (a mismatch or a failed download leaves nothing behind; the part-file of a killed
  one is removed by the next attempt).
- `hub_folder("ORG/REPO")`: the files of an OpenCLIP or transformers CLIP repository, fetched through
  `huggingface_hub` into its standard cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`).

Downloads are off when `HF_HUB_OFFLINE=1` or `CLIPFORGE_OFFLINE=1`; cached files still resolve. The
environment is read when a name is resolved, not when clipforge is imported.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether downloads are switched off (HF_HUB_OFFLINE or CLIPFORGE_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "CLIPFORGE_OFFLINE"))


def cache_dir() -> Path:
    """Where clipforge keeps downloaded weights."""
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipforge"


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache, as huggingface_hub would choose it from the current environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home) / "hub"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    """Whether `path` is the file of `sha256` (hashed once; a stamp beside it records size and mtime)."""
    if not path.exists():
        return False
    stamp = path.with_name(path.name + ".sha256")
    st = path.stat()
    key = f"{sha256} {st.st_size} {st.st_mtime_ns}"
    if stamp.exists() and stamp.read_text().strip() == key:
        return True
    if _sha256(path) != sha256:
        return False
    stamp.write_text(key + "\n")
    return True


def download(url: str, sha256: str, filename: str, subdir: str = "", progress: bool = True) -> Path:
    """`url` as `cache_dir()/subdir/filename`, downloaded once and checked against its SHA-256."""
    target = cache_dir() / subdir / filename
    if _verified(target, sha256):
        return target
    if target.exists():
        raise CheckpointError(
            f"{target} does not match its published SHA-256 ({sha256[:12]}...); delete it to download it again"
        )
    if offline():
        raise CheckpointError(
            f"{filename} is not in the cache ({target.parent}) and downloads are off (HF_HUB_OFFLINE or "
            f"CLIPFORGE_OFFLINE); download it on a connected machine, or copy it there"
        )
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{filename}.*.part"):  # left by a download that was killed
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        if h.hexdigest() != sha256:
            raise CheckpointError(
                f"{url} gave a file whose SHA-256 {h.hexdigest()[:12]}... is not the published {sha256[:12]}...; "
                "nothing was kept (a damaged download or a changed file: try again later)"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(f"could not download {url}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _verified(target, sha256)
    return target


# Files that make a CLIP model folder, in the order they are tried: OpenCLIP's, then transformers'.
_OPEN_CLIP = ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
_TRANSFORMERS = ("config.json", ("model.safetensors", "pytorch_model.bin"))
_OPTIONAL = ("preprocessor_config.json",)


def hub_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub repository `repo_id` holding an OpenCLIP or transformers CLIP
    model (config and weights, plus the image processor config where there is one)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError("hf-hub: names need huggingface_hub: pip install huggingface_hub") from None

    def fetch(filename: str) -> Path | None:
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=str(hf_cache_dir()),
                    local_files_only=offline(),
                    library_name="clipforge",
                )
            )
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise CheckpointError(f"hf-hub:{repo_id}: {str(e).splitlines()[0]}") from None

    for config, weights in (_OPEN_CLIP, _TRANSFORMERS):
        if fetch(config) is None:
            continue
        found = next((w for w in (fetch(name) for name in weights) if w is not None), None)
        if found is None:
            raise CheckpointError(f"hf-hub:{repo_id} has {config} but none of {', '.join(weights)}")
        for name in _OPTIONAL:
            fetch(name)
        return found.parent
    where = "in the local Hub cache (downloads are off)" if offline() else "on the Hub"
    raise CheckpointError(
        f"hf-hub:{repo_id}: no OpenCLIP (open_clip_config.json) or transformers (config.json) CLIP model {where} "
        f"(cache: {hf_cache_dir()})"
    )
