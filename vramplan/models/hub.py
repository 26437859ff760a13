"""`--model org/name`: a Hugging Face Hub id, read from the local HF cache offline or fetched (config.json only)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vramplan.errors import ModelConfigError

# huggingface_hub/utils/_validators.py validate_repo_id: "namespace/name" of letters, digits, '-', '_', '.', each
# part at most 96 characters.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Seconds to wait for the Hub's answer before saying it cannot be reached (huggingface_hub's etag_timeout is 10 s).
HUB_TIMEOUT_SECONDS = 10.0
UNREACHABLE = "not in the local HF cache and the Hub could not be reached ({}); pass a config.json path instead"


def looks_like_hub_id(model: str) -> bool:
    return bool(HUB_ID.match(model)) and not path_exists(Path(model).expanduser())


def path_exists(path: Path) -> bool:
    """Whether `path` exists; a name the file system cannot hold (too long, ...) does not."""
    try:
        return path.exists()
    except OSError:
        return False


def fetch_hub_config(repo_id: str) -> tuple[Path, str]:
    """The path of `repo_id`'s config.json and how it was found: the local cache first, then the Hub (unless
    HF_HUB_OFFLINE=1). Raises ModelConfigError with the reason when neither has it."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover - a core dependency
        raise ModelConfigError(f"--model {repo_id}: reading Hub ids needs huggingface_hub (pip install huggingface_hub)")
    try:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError as err:
        raise ModelConfigError(f"--model {repo_id}: not a valid Hub id ({_first_line(err)})") from None
    if isinstance(cached, str):
        return Path(cached), f"hub {repo_id} (local HF cache)"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelConfigError(
            f"--model {repo_id}: config.json is not in the local HF cache and HF_HUB_OFFLINE is set; "
            f"download it once (huggingface-cli download {repo_id} config.json) or pass a config.json path"
        )
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings would break the one-line rule
    _probe_hub(huggingface_hub, repo_id)
    try:
        path = huggingface_hub.hf_hub_download(repo_id, "config.json", etag_timeout=HUB_TIMEOUT_SECONDS)
    except Exception as err:  # noqa: BLE001 - every failure of the download (HTTP, network, disk) is one line
        raise _hub_error(repo_id, err) from None
    return Path(path), f"hub {repo_id} (downloaded config.json)"


def _probe_hub(huggingface_hub: Any, repo_id: str) -> None:
    """One HEAD request for config.json through huggingface_hub's own HTTP client (which honours HTTPS_PROXY and
    HF_ENDPOINT), without retries: hf_hub_download would retry a failed request with back-off for a minute."""
    url = huggingface_hub.hf_hub_url(repo_id, "config.json")
    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=HUB_TIMEOUT_SECONDS)
    except Exception as err:  # noqa: BLE001 - every failure of the request (HTTP, network, proxy) is one line
        raise _hub_error(repo_id, err) from None


def _hub_error(repo_id: str, err: Exception) -> ModelConfigError:
    """The one-line error for a failed Hub request: no such repo, no config.json, unreachable, or the HTTP error."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(err, RepositoryNotFoundError):
        return ModelConfigError(f"--model {repo_id}: no such model on the Hugging Face Hub (or it is gated/private; "
                                "log in with huggingface-cli login)")
    if isinstance(err, EntryNotFoundError) and not isinstance(err, LocalEntryNotFoundError):
        return ModelConfigError(f"--model {repo_id}: the Hub repository has no config.json")
    if isinstance(err, LocalEntryNotFoundError):
        return ModelConfigError(f"--model {repo_id}: " + UNREACHABLE.format("no network?"))
    if isinstance(err, HfHubHTTPError):
        return ModelConfigError(f"--model {repo_id}: fetching config.json from the Hub failed ({_first_line(err)})")
    return ModelConfigError(f"--model {repo_id}: " + UNREACHABLE.format(f"{err.__class__.__name__}: "
                                                                        f"{_first_line(err)}"))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else err.__class__.__name__


def hub_config(repo_id: str) -> tuple[dict[str, Any], str]:
    from vramplan.models.hf_config import load_config_file

    path, how = fetch_hub_config(repo_id)
    return load_config_file(path), how
