"""Load rendered service configurations through the services' own loaders.

This is what makes a rendering trustworthy: the daemon's, the mirror's and the
publisher's settings models read the rendered file exactly as they will at
start-up. Secret files do not exist where ``ingestd site check`` runs, so the
documents are rendered with secrets pointing at placeholder files in a private
temporary folder; everything else is the real rendering. The environment's
``INGESTD_*`` variables are hidden meanwhile, so an operator's shell cannot mask
a problem of the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import RenderError
from ._model import ServiceName, Site
from ._output import dump_yaml
from ._services import SecretPath, ServiceConfig, service_config

__all__ = [
    "Placeholders",
    "isolated_environment",
    "load_service_settings",
    "placeholder_secrets",
    "validate_services",
]


@contextmanager
def isolated_environment() -> Iterator[None]:
    """Hide every ``INGESTD_*`` variable for the duration (restored afterwards)."""
    hidden = {key: value for key, value in os.environ.items() if key.startswith("INGESTD_")}
    for key in hidden:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(hidden)


@dataclass(frozen=True)
class Placeholders:
    """Placeholder secret files: ``path(name)`` resolves a secret to one, ``folder`` holds them all."""

    folder: Path
    path: SecretPath

    def real_parent(self, site: Site, secret: str) -> tuple[str, str]:
        """(placeholder folder of ``secret``, its real folder on a systemd host)."""
        return str(self.folder / secret), str(site.secret_file(secret).parent)


@contextmanager
def placeholder_secrets(site: Site) -> Iterator[Placeholders]:
    """Create a non-empty placeholder file for every secret of ``site``, each in its own folder.

    Each placeholder keeps the real file's name, in a folder named after the
    secret, so a rendered reference can be mapped back to the real location.
    """
    with tempfile.TemporaryDirectory(prefix="ingestd-site-") as folder:
        root = Path(folder)
        paths: dict[str, str] = {}
        for name in site.secrets:
            target = root / name / site.secret_file(name).name
            target.parent.mkdir()
            target.write_text("placeholder\n")
            target.chmod(0o600)
            paths[name] = str(target)
        yield Placeholders(root, lambda name: paths[name])


def _loader(service: ServiceName) -> Callable[[Path], Any]:
    if service is ServiceName.daemon:
        from ingestd.config import load_settings

        return load_settings
    if service is ServiceName.mirror:
        from mirror import load_mirror_settings

        return load_mirror_settings
    from publisher import load_publisher_settings

    return load_publisher_settings


def load_service_settings(config: ServiceConfig, folder: Path) -> Any:
    """Write ``config``'s document into ``folder`` and load it with the service's own loader.

    Raises
    ------
    RenderError
        The loader refused the document; the message is the loader's own.
    """
    path = folder / config.file_name
    path.write_text(dump_yaml(config.document))
    try:
        with isolated_environment():
            return _loader(config.service)(path)
    except (ValueError, FileNotFoundError) as error:  # ValidationError and every config error are ValueErrors
        raise RenderError(
            f"the {config.service.value} refuses the configuration rendered for it:\n{error}"
        ) from None


def validate_services(site: Site) -> dict[ServiceName, Any]:
    """Render every enabled service's configuration and load it through its loader; return the settings.

    Raises
    ------
    RenderError
        A service refuses its rendered configuration (the first one found).
    """
    loaded: dict[ServiceName, Any] = {}
    with (
        placeholder_secrets(site) as placeholders,
        tempfile.TemporaryDirectory(prefix="ingestd-site-") as work,
    ):
        for service in site.enabled_services:
            config = service_config(site, service, placeholders.path)
            loaded[service] = load_service_settings(config, Path(work))
    return loaded
