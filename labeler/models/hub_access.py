"""Hub ids without the wait: the local cache first, and a quick probe before any download.

Without a network, ``huggingface_hub`` retries a download for about a minute
before it gives up. Here a hub id whose files are in the local cache is
loaded from the cache without asking the hub; otherwise the hub's endpoint
(``HF_ENDPOINT``, default ``https://huggingface.co``) must accept a
connection within :data:`PROBE_SECONDS`, or the load fails at once with what
to do instead.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from labeler.errors import ModelLoadError

#: Seconds the hub's endpoint has to accept a connection.
PROBE_SECONDS = 3.0


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether the hub's endpoint accepts a TCP connection within ``timeout`` seconds."""
    url = urlparse(_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(what: str, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"{what}: {reason}; pass a local path instead (a transformers model folder, a SAM2 .pt checkpoint), "
        "or fill the cache on a machine with a network (HF_HOME) and set HF_HUB_OFFLINE=1"
    )


def cached_file(repo_id: str, filename: str) -> str | None:
    """The path of ``filename`` of ``repo_id`` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def require_hub(what: str) -> None:
    """Fail now, with the way out, when a download would only retry: offline mode, or an unreachable hub.

    Raises:
        ModelLoadError: ``HF_HUB_OFFLINE`` is set, or the endpoint did not answer in time.
    """
    if _offline():
        raise _unavailable(what, "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise _unavailable(what, f"not in the local Hugging Face cache, and {_endpoint()} cannot be reached "
                                 f"(no answer in {PROBE_SECONDS:g} s)")


def hub_file(repo_id: str, filename: str, *, what: str) -> str:
    """A local path of ``filename`` of ``repo_id``: from the cache, else downloaded (after :func:`require_hub`)."""
    cached = cached_file(repo_id, filename)
    if cached is not None:
        return cached
    require_hub(what)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as error:  # noqa: BLE001 - any failure of the download is the same user error
        raise _unavailable(what, f"cannot be fetched from the hub ({type(error).__name__})") from None


def prepare_hub_model(repo_id: str, *, what: str) -> bool:
    """Before a transformers ``from_pretrained(repo_id)``: True when it is cached (load it
    with ``local_files_only``); else :func:`require_hub` and False."""
    if cached_file(repo_id, "config.json") is not None:
        return True
    require_hub(what)
    return False
