"""mm2 target: MirrorMaker 2 in place of ``ingestd mirror``, from the same site.

The mirror's own renderer (:mod:`mirror.mm2`) turns its settings into a
dedicated-mode ``mm2.properties`` and a Strimzi ``KafkaMirrorMaker2``; this module
builds those settings from the site exactly as the other targets do (then loads
them through the mirror's settings model), and maps the site's secrets catalogue
onto what each format needs: files on the MirrorMaker 2 host for the properties,
Kubernetes Secrets for Strimzi.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._errors import RenderError
from ._load import LoadedSite
from ._model import KafkaCluster, ServiceName, Site
from ._output import Rendering, Target, generated_header
from ._services import service_config
from ._validate import load_service_settings, placeholder_secrets

__all__ = ["render_mm2"]


def _strimzi_secrets(site: Site, cluster: KafkaCluster) -> object:
    from mirror.mm2 import StrimziSecrets

    security = cluster.security
    values: dict[str, str] = {}
    if security.ca is not None:
        values["ca_secret"], values["ca_key"] = site.kubernetes_secret(security.ca.secret)
    if security.password is not None:
        values["user_secret"], values["password_key"] = site.kubernetes_secret(security.password.secret)
    if security.certificate is not None and security.key is not None:
        certificate_secret, certificate_key = site.kubernetes_secret(security.certificate.secret)
        key_secret, key_key = site.kubernetes_secret(security.key.secret)
        if certificate_secret != key_secret:
            raise RenderError(
                "Strimzi reads a client certificate and its key from one Secret; the site puts them in "
                f"{certificate_secret} and {key_secret} (set kubernetes.secret of both to one Secret)"
            )
        values.update(
            user_secret=certificate_secret, certificate_key=certificate_key, private_key_key=key_key
        )
    return StrimziSecrets(**values)


def render_mm2(loaded: LoadedSite) -> Rendering:
    """Render ``mm2.properties`` and ``kafkamirrormaker2.yaml`` for the site's mirror.

    Raises
    ------
    RenderError
        The site runs no mirror (no facility or local cluster), the mirror's loader
        refuses the settings, or MirrorMaker 2 cannot express them.
    """
    from mirror import Mm2RenderError
    from mirror.mm2 import Mm2Options, render_mm2_properties, render_strimzi_mirrormaker2

    site = loaded.site
    if site.facility is None or site.local_kafka is None:
        raise RenderError(
            "the mm2 target needs a facility and its local_kafka (the mirror's source and target)"
        )
    options = Mm2Options(
        name=f"ingestd-{site.instance}-mm2",
        namespace=site.namespace,
        replicas=max(1, site.mirror.replicas),
        internal_replication_factor=site.local_kafka.replication_factor,
        source_secrets=_strimzi_secrets(site, site.central_kafka),
        target_secrets=_strimzi_secrets(site, site.local_kafka),
    )
    with (
        placeholder_secrets(site) as placeholders,
        tempfile.TemporaryDirectory(prefix="ingestd-site-") as work,
    ):
        config = service_config(site, ServiceName.mirror, placeholders.path)
        settings = load_service_settings(config, Path(work))
        try:
            properties = render_mm2_properties(settings, options)
            strimzi = render_strimzi_mirrormaker2(settings, options)
        except Mm2RenderError as error:
            raise RenderError(f"MirrorMaker 2 cannot express the site's mirror: {error}") from None
        for secret in config.secrets:
            placeholder, real = placeholders.real_parent(site, secret)
            properties = properties.replace(placeholder, real)
            if placeholder in strimzi:
                raise RenderError(f"the Strimzi resource refers to a local file for secret {secret}")
    header = generated_header(loaded.provenance, site.instance)
    rendering = Rendering(Target.mm2)
    rendering.add("mm2.properties", header + properties)
    rendering.add("kafkamirrormaker2.yaml", header + strimzi)
    return rendering
