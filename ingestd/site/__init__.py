"""Site files: one file per facility deployment, rendered to systemd, Kubernetes, docker-compose and MM2.

* :func:`load_site` — read a site file with its ``extends`` parents and overlays,
  validate it (:class:`Site`), with errors naming the file to edit;
* :func:`render` — produce one target's files (:class:`Rendering`);
* :func:`check_site` — load every service's rendered configuration through the
  service's own loader and render every target (``ingestd site check``);
* :func:`supervise` — systemd readiness and watchdog from a service's health
  endpoint (``ingestd site supervise``, what the rendered units run).

The layering rules are documented in :mod:`ingestd.site._layers` and in
``docs/OPERATIONS.md``.
"""

from ._errors import RenderError, SiteError, SiteFileError, SiteValidationError
from ._layers import LayeredSite, load_layers
from ._load import OVERLAY_FOLDER, LoadedSite, environment_overlay, load_site
from ._model import SCHEMA_VERSION, Environment, SecretRef, SecretSpec, ServiceName, Site
from ._output import RenderedFile, Rendering, Target
from ._render import CheckReport, applicable_targets, check_site, render
from ._services import CONFIG_FILES, ServiceConfig, service_config, service_configs
from ._supervise import HealthProbe, notify, supervise
from ._systemd import HEALTH_URL_VARIABLE, credential_path, template_unit_name, unit_name

__all__ = [
    "CONFIG_FILES",
    "HEALTH_URL_VARIABLE",
    "OVERLAY_FOLDER",
    "SCHEMA_VERSION",
    "CheckReport",
    "Environment",
    "HealthProbe",
    "LayeredSite",
    "LoadedSite",
    "RenderError",
    "RenderedFile",
    "Rendering",
    "SecretRef",
    "SecretSpec",
    "ServiceConfig",
    "ServiceName",
    "Site",
    "SiteError",
    "SiteFileError",
    "SiteValidationError",
    "Target",
    "applicable_targets",
    "check_site",
    "credential_path",
    "environment_overlay",
    "load_layers",
    "load_site",
    "notify",
    "render",
    "service_config",
    "service_configs",
    "supervise",
    "template_unit_name",
    "unit_name",
]
