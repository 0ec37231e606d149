"""systemd target: unit templates per service, a drop-in per instance, the service files, an install script.

Layout of the output folder (``install.sh`` copies it into place)::

    systemd/ingestd@.target                          one target per instance groups its services
    systemd/ingestd-<service>@.service               template, the same for every instance of a host
    systemd/ingestd-<service>@<instance>.service.d/  what differs per instance: health URL, logging,
        10-site.conf                                 credentials, service user
    config/<instance>/<service>.yaml                 what the service reads with --config
    install.sh                                       installs all of it (DESTDIR-aware), enables the units

Why these choices:

- Credentials, not environment variables, carry secrets: ``LoadCredential=``
  copies a root-only file into ``/run/credentials/<unit>/`` readable by that unit
  alone (even with ``DynamicUser=``), never visible in ``/proc/<pid>/environ`` nor
  inherited. An ``EnvironmentFile=`` (optional) remains for local overrides.
- ``Type=notify`` with a watchdog: ``ingestd site supervise`` starts the service,
  reports ``READY=1`` once ``/healthz`` answers and pets the watchdog while it
  keeps answering; a hung service stops answering and systemd restarts it.
- Exit status 2 means invalid settings: no restart loop (``RestartPreventExitStatus``).
- Hardened sandbox: transient user, read-only system, no privileges, no new
  capabilities, only IP and Unix sockets, the system-service syscall set.
"""

from __future__ import annotations

import shlex
from typing import Final

from ._load import LoadedSite
from ._model import ServiceName, Site
from ._output import Rendering, Target, dump_yaml, generated_header
from ._services import MigrationJob, SecretPath, ServiceConfig, migration_job, service_config

__all__ = [
    "HEALTH_URL_VARIABLE",
    "credential_path",
    "dropin_path",
    "render_systemd",
    "template_unit_name",
    "unit_name",
]

HEALTH_URL_VARIABLE: Final = "INGESTD_SUPERVISE_HEALTH_URL"
"""Set per instance in the drop-in; the template's ExecStart passes it to ``ingestd site supervise``."""

_DESCRIPTIONS: Final = {
    ServiceName.daemon: "ingestd ingest daemon (%i): transfer events into the registry",
    ServiceName.mirror: "ingestd mirror (%i): the facility's topics from the central Kafka",
    ServiceName.publisher: "ingestd publisher (%i): Rucio transfer events to the central Kafka",
}

_STOP_TIMEOUT_S: Final = 60
"""Above every service's own shutdown bound (30 s by default), so they stop cleanly."""

_HARDENING: Final = """\
# Sandbox: nothing here needs more than network sockets and its own state folder.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
UMask=0077
# Not set: MemoryDenyWriteExecute (libffi closures in extension modules may need W+X pages),
# PrivateUsers (would hide the data files' owners from the daemon), IPAddressDeny (sites differ).
"""


def template_unit_name(service: ServiceName) -> str:
    """``ingestd-<service>@.service``."""
    return f"ingestd-{service.value}@.service"


def unit_name(service: ServiceName, instance: str) -> str:
    """``ingestd-<service>@<instance>.service``."""
    return f"ingestd-{service.value}@{instance}.service"


def dropin_path(service: ServiceName, instance: str) -> str:
    """Path of an instance's drop-in, relative to the output folder."""
    return f"systemd/{unit_name(service, instance)}.d/10-site.conf"


def credential_path(service: ServiceName, instance: str, secret: str) -> str:
    """Where systemd puts credential ``secret`` for the unit (``$CREDENTIALS_DIRECTORY/<secret>``)."""
    return f"/run/credentials/{unit_name(service, instance)}/{secret}"


def _executable(site: Site) -> str:
    return str(site.install.prefix / "bin" / "ingestd")


def _template(site: Site, config: ServiceConfig, header: str) -> str:
    executable = _executable(site)
    config_path = str(site.install.config_dir / "%i" / config.file_name)
    command = config.command(executable, config_path)
    exec_start = " ".join(
        [shlex.quote(executable), "site", "supervise", "--health-url", f"${{{HEALTH_URL_VARIABLE}}}", "--"]
        + [shlex.quote(part) for part in command]
    )
    service = config.service.value
    return f"""{header}# Template shared by every instance on this host; what differs per instance is in
# ingestd-{service}@<instance>.service.d/. Start all services of an instance with
# `systemctl start ingestd@<instance>.target`.

[Unit]
Description={_DESCRIPTIONS[config.service]}
Documentation=https://github.com/lsst-dm/ingestd/blob/main/docs/OPERATIONS.md
Wants=network-online.target
After=network-online.target
PartOf=ingestd@%i.target
# Give up (and alert through the failed state) after 5 failed starts in 10 minutes.
StartLimitIntervalSec=10min
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# SIGTERM reaches the supervisor only, which forwards it once; the service finishes its batch.
KillMode=mixed
TimeoutStartSec=300
TimeoutStopSec={_STOP_TIMEOUT_S}
WatchdogSec=60
Restart=on-failure
RestartSec=5
# 2: the settings are invalid. Restarting cannot fix that; the unit fails at once instead.
RestartPreventExitStatus=2
EnvironmentFile=-{site.install.config_dir}/%i/environment
DynamicUser=yes
StateDirectory=ingestd/%i/{service}
WorkingDirectory=%S/ingestd/%i/{service}

{_HARDENING}
[Install]
WantedBy=ingestd@%i.target
"""


MIGRATION_UNIT: Final = "ingestd-registry-upgrade@.service"


def _migration_template(site: Site, header: str) -> str:
    executable = shlex.quote(_executable(site))
    return f"""{header}# Migrates the registry schema to the version this ingestd ships. Run it after
# installing a new ingestd and before restarting the daemon:
#   systemctl start ingestd-registry-upgrade@<instance>   (docs/OPERATIONS.md, "Upgrading")

[Unit]
Description=ingestd registry schema upgrade (%i)
Documentation=https://github.com/lsst-dm/ingestd/blob/main/docs/OPERATIONS.md
Wants=network-online.target
After=network-online.target
Before=ingestd-daemon@%i.service

[Service]
Type=oneshot
ExecStart={executable} registry upgrade
EnvironmentFile=-{site.install.config_dir}/%i/environment
DynamicUser=yes
TimeoutStartSec=1h

{_HARDENING}"""


def _migration_dropin(site: Site, job: MigrationJob, header: str) -> str:
    lines = [header.rstrip("\n"), "", "[Service]"]
    lines += [f"Environment={name}={value}" for name, value in job.environment.items()]
    lines += [f"LoadCredential={secret}:{site.secret_file(secret)}" for secret in job.secrets]
    if site.install.user is not None:
        lines += ["DynamicUser=no", f"User={site.install.user}"]
    return "\n".join(lines) + "\n"


def _target(header: str) -> str:
    return f"""{header}
[Unit]
Description=ingestd services of instance %i
Documentation=https://github.com/lsst-dm/ingestd/blob/main/docs/OPERATIONS.md
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target
"""


def _protect_home(site: Site) -> str | None:
    """``read-only`` when the facility's files live under a home folder (the default hides those)."""
    if site.facility is None:
        return None
    facility = site.site_map.facility(site.facility)
    homes = ("/home", "/root", "/run/user")
    for prefix in facility.prefixes.values():
        path = prefix.fs_prefix.removeprefix("file://")
        if any(path == home or path.startswith(f"{home}/") for home in homes):
            return "read-only"
    return None


def _dropin(site: Site, config: ServiceConfig, header: str) -> str:
    lines = [header.rstrip("\n"), "", "[Service]"]
    lines.append(f"Environment={HEALTH_URL_VARIABLE}=http://127.0.0.1:{config.port}/healthz")
    for name, value in config.environment.items():
        lines.append(f"Environment={name}={value}")
    for secret in config.secrets:
        lines.append(f"LoadCredential={secret}:{site.secret_file(secret)}")
    if site.install.user is not None:
        lines += ["DynamicUser=no", f"User={site.install.user}"]
    if site.install.supplementary_groups:
        lines.append(f"SupplementaryGroups={' '.join(site.install.supplementary_groups)}")
    if config.service is ServiceName.daemon:
        protect_home = _protect_home(site)
        if protect_home is not None:
            lines.append(f"ProtectHome={protect_home}")
    return "\n".join(lines) + "\n"


def _install_script(site: Site, configs: list[ServiceConfig], job: MigrationJob | None, header: str) -> str:
    instance = site.instance
    config_dir = site.install.config_dir / instance
    steps: list[str] = [
        f'install -d -m 0755 "$root{config_dir}"',
    ]
    for config in configs:
        steps.append(
            f'install -m 0644 "$here/config/{instance}/{config.file_name}" '
            f'"$root{config_dir}/{config.file_name}"'
        )
        template = template_unit_name(config.service)
        steps.append(f'install -D -m 0644 "$here/systemd/{template}" "$root$units/{template}"')
        dropin = f"{unit_name(config.service, instance)}.d"
        steps.append(
            f'install -D -m 0644 "$here/systemd/{dropin}/10-site.conf" "$root$units/{dropin}/10-site.conf"'
        )
    if job is not None:
        dropin = f"ingestd-registry-upgrade@{instance}.service.d"
        steps.append(f'install -D -m 0644 "$here/systemd/{MIGRATION_UNIT}" "$root$units/{MIGRATION_UNIT}"')
        steps.append(
            f'install -D -m 0644 "$here/systemd/{dropin}/10-site.conf" "$root$units/{dropin}/10-site.conf"'
        )
    steps.append('install -D -m 0644 "$here/systemd/ingestd@.target" "$root$units/ingestd@.target"')
    secret_checks: list[str] = []
    secrets = sorted(
        {secret for config in configs for secret in config.secrets} | set(job.secrets if job else ())
    )
    folders = sorted({str(site.secret_file(secret).parent) for secret in secrets})
    for folder in folders:
        steps.append(f'install -d -m 0700 "$root{folder}"')
    for secret in secrets:
        path = site.secret_file(secret)
        description = site.secrets[secret].description.replace('"', "'")
        secret_checks.append(
            f'[ -s "$root{path}" ] || '
            f'{{ echo "to do: put {description} in {path} (mode 0600)" >&2; missing=1; }}'
        )
    units = " ".join(unit_name(config.service, instance) for config in configs)
    start = f"start with: systemctl start ingestd@{instance}.target"
    if job is not None:
        migrate = f"systemctl start ingestd-registry-upgrade@{instance}.service"
        start = f"migrate the registry ({migrate}), then {start}"
    body = "\n".join(steps)
    checks = "\n".join(secret_checks) or ":"
    return f"""#!/bin/sh
{header}# Installs instance {instance}: service files, unit templates and drop-ins, then enables the units.
# Run as root. With DESTDIR=/some/root it only copies files below that root (packaging, tests).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=${{DESTDIR:-}}
units=/etc/systemd/system
missing=0

{body}

{checks}

if [ -n "$root" ]; then
    echo "installed below $root; nothing enabled"
    exit 0
fi
systemctl daemon-reload
systemctl enable {units} ingestd@{instance}.target
if [ "$missing" -ne 0 ]; then
    echo "credentials missing: provide them, then run: systemctl start ingestd@{instance}.target" >&2
    exit 1
fi
echo "{start}"
"""


def _credential_resolver(service: ServiceName, instance: str) -> SecretPath:
    return lambda secret: credential_path(service, instance, secret)


def render_systemd(loaded: LoadedSite) -> Rendering:
    """Render the systemd units, drop-ins, service files and install script of ``loaded``."""
    site = loaded.site
    instance = site.instance
    header = generated_header(loaded.provenance, instance)
    configs = [
        service_config(site, service, _credential_resolver(service, instance))
        for service in site.enabled_services
    ]
    rendering = Rendering(Target.systemd)
    for config in configs:
        rendering.add(f"config/{instance}/{config.file_name}", header + dump_yaml(config.document))
        rendering.add(f"systemd/{template_unit_name(config.service)}", _template(site, config, header))
        rendering.add(dropin_path(config.service, instance), _dropin(site, config, header))
    migration_unit = f"ingestd-registry-upgrade@{instance}.service"
    job = migration_job(site, lambda secret: f"/run/credentials/{migration_unit}/{secret}")
    if job is not None:
        rendering.add(f"systemd/{MIGRATION_UNIT}", _migration_template(site, header))
        rendering.add(f"systemd/{migration_unit}.d/10-site.conf", _migration_dropin(site, job, header))
    rendering.add("systemd/ingestd@.target", _target(header))
    rendering.add("install.sh", _install_script(site, configs, job, header), mode=0o755)
    return rendering
