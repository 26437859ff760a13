"""`--model org/name`: a Hugging Face Hub id, read from the local HF cache offline or fetched (config.json only)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vramplan.errors import ModelConfigError

# huggingface_hub/utils/_validators.py validate_repo_id: "namespace/name" of letters, digits, '-', '_', '.'.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Seconds to wait for the Hub before saying it cannot be reached (huggingface_hub's etag_timeout is 10 s).
HUB_TIMEOUT_SECONDS = 10.0


def looks_like_hub_id(model: str) -> bool:
    return bool(HUB_ID.match(model)) and not Path(model).expanduser().exists()


def fetch_hub_config(repo_id: str) -> tuple[Path, str]:
    """The path of `repo_id`'s config.json and how it was found: the local cache first, then the Hub (unless
    HF_HUB_OFFLINE=1). Raises ModelConfigError with the reason when neither has it."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - a core dependency
        raise ModelConfigError(f"--model {repo_id}: reading Hub ids needs huggingface_hub (pip install huggingface_hub)")
    cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached), f"hub {repo_id} (local HF cache)"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelConfigError(
            f"--model {repo_id}: config.json is not in the local HF cache and HF_HUB_OFFLINE is set; "
            f"download it once (huggingface-cli download {repo_id} config.json) or pass a config.json path"
        )
    if not _hub_reachable():
        raise ModelConfigError(f"--model {repo_id}: not in the local HF cache and the Hub could not be reached "
                               "(no network?); pass a config.json path instead")
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings would break the one-line rule
    try:
        path = huggingface_hub.hf_hub_download(repo_id, "config.json", etag_timeout=HUB_TIMEOUT_SECONDS)
    except RepositoryNotFoundError:
        raise ModelConfigError(f"--model {repo_id}: no such model on the Hugging Face Hub (or it is gated/private; "
                               "log in with huggingface-cli login)") from None
    except LocalEntryNotFoundError:
        raise ModelConfigError(f"--model {repo_id}: not in the local HF cache and the Hub could not be reached "
                               "(no network?); pass a config.json path instead") from None
    except (HfHubHTTPError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise ModelConfigError(f"--model {repo_id}: fetching config.json from the Hub failed ({first})") from None
    return Path(path), f"hub {repo_id} (downloaded config.json)"


def _hub_reachable() -> bool:
    """Whether the Hub's host resolves and accepts a connection within the timeout (fails fast without network,
    where huggingface_hub would retry with back-off for half a minute)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=HUB_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def hub_config(repo_id: str) -> tuple[dict[str, Any], str]:
    from vramplan.models.hf_config import load_config_file

    path, how = fetch_hub_config(repo_id)
    return load_config_file(path), how
