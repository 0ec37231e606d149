"""Render a site for one target, or check it for every target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ._compose import render_compose
from ._errors import SiteError
from ._kubernetes import render_kubernetes
from ._load import LoadedSite
from ._mm2 import render_mm2
from ._model import ServiceName
from ._output import Rendering, Target
from ._services import migration_job, service_config
from ._systemd import render_systemd, unit_name
from ._validate import validate_services

__all__ = ["CheckReport", "applicable_targets", "check_site", "render"]

_RENDERERS: Final[dict[Target, Callable[[LoadedSite], Rendering]]] = {
    Target.systemd: render_systemd,
    Target.kubernetes: render_kubernetes,
    Target.compose: render_compose,
    Target.mm2: render_mm2,
}


def render(loaded: LoadedSite, target: Target) -> Rendering:
    """Render ``loaded`` for ``target``.

    Raises
    ------
    RenderError
        The target cannot express the site (the message says what to change).
    SiteValidationError
        A service's ``config`` mapping overrides a value the site derives.
    """
    return _RENDERERS[target](loaded)


def applicable_targets(loaded: LoadedSite) -> list[Target]:
    """The targets that make sense for the site (mm2 only where a mirror runs)."""
    targets = [Target.systemd, Target.kubernetes, Target.compose]
    if ServiceName.mirror in loaded.site.enabled_services:
        targets.append(Target.mm2)
    return targets


@dataclass
class CheckReport:
    """What ``ingestd site check`` found; ``problems`` empty means the site is good to deploy."""

    site: str
    files: list[str]
    services: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    rendered: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "site": self.site,
            "files": self.files,
            "services": self.services,
            "secrets": self.secrets,
            "rendered": self.rendered,
            "problems": self.problems,
            "warnings": self.warnings,
            "ok": self.ok,
        }


def check_site(loaded: LoadedSite) -> CheckReport:
    """Validate every service's configuration with its own loader and render every applicable target."""
    site = loaded.site
    report = CheckReport(site=site.instance, files=loaded.layers.relative_names())
    report.services = {service.value: site.service(service).port for service in site.enabled_services}
    try:
        validate_services(site)
    except SiteError as error:
        report.problems.append(str(error))
    for target in applicable_targets(loaded):
        try:
            report.rendered[target.value] = len(render(loaded, target).files)
        except SiteError as error:
            report.problems.append(f"{target.value}: {error}")
    readers_of = {service: _secrets_read(loaded, service) for service in site.enabled_services}
    used: dict[str, list[str]] = {}
    for name, path in site.secret_uses():
        used.setdefault(name, []).append(path)
    for name in sorted(site.secrets):
        spec = site.secrets[name]
        if name not in used:
            report.warnings.append(
                f"secrets.{name}: declared but not used by this site (an overlay may use it)"
            )
            continue
        secret_object, key = site.kubernetes_secret(name)
        readers = [
            unit_name(service, site.instance) for service, names in readers_of.items() if name in names
        ]
        job = migration_job(site, lambda secret: secret)
        if job is not None and name in job.secrets:
            readers.append(f"ingestd-registry-upgrade@{site.instance}.service")
        report.secrets[name] = {
            "description": spec.description,
            "used_by": ", ".join(used[name]),
            "systemd": f"{site.secret_file(name)} (LoadCredential for {', '.join(readers) or 'no unit'})",
            "kubernetes": f"Secret {secret_object}, key {key}",
            "compose": site.compose_secret_file(name),
        }
    return report


def _secrets_read(loaded: LoadedSite, service: ServiceName) -> tuple[str, ...]:
    try:
        return service_config(loaded.site, service, lambda name: name).secrets
    except SiteError:
        return ()
