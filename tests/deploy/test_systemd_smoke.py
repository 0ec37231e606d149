"""Acceptance: the rendered daemon unit's command line, run without systemd, ingests from the test bed.

The UKDF site in its dev environment is rendered for systemd with one more overlay
(this test's): the test bed's real endpoints, a fresh database, its own topic,
group and port, the virtual environment as the install prefix, and the Rucio
prefix of the bundled sample events mapped to their files. Then the test does
what systemd would: runs the registry migration unit's command (it creates the
schema), reads the daemon's ``ExecStart=`` from the unit template and the
``Environment=`` lines from the instance's drop-in, expands the specifiers, and
starts that command with a notification socket. Real-format events are produced
to the topic; the daemon registers them; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_producer
from ingestd.site import ServiceName, Target, load_site, render, template_unit_name
from ingestd.site._systemd import dropin_path

REPO = Path(__file__).resolve().parents[2]
SITES_DIR = REPO / "deploy" / "sites"
SAMPLES = REPO / "ingestd" / "samples"
"""Events in HermesK's format built from tests/data/samples, with the files they point to."""
SAMPLE_PREFIX = "root://xrd5:1098//rucio/demo/"
UKDF_RSE = "RAL_BUTLER_DISK"


def parse_unit(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (enough of systemd's syntax for the rendered files)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def expand(word: str, instance: str, environment: dict[str, str]) -> str:
    """Expand the specifiers and ``${VAR}`` references the rendered ExecStart uses; refuse any other."""
    word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: environment[m.group(1)], word)
    word = word.replace("%i", instance)
    leftover = re.findall(r"%[^%]", word.replace("%%", ""))
    assert not leftover, f"unexpected specifiers {leftover} in {word!r}"
    return word.replace("%%", "%")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_events(topic_rse: str) -> list[bytes]:
    """The bundled events, destined to a UKDF RSE instead of the demo's XRD5."""
    events = []
    for line in (SAMPLES / "transfer-done.jsonl").read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            events.append(line.encode())  # the truncated line stays truncated: it must be rejected
            continue
        if event.get("payload", {}).get("dst-rse") == "XRD5":
            event["payload"]["dst-rse"] = topic_rse
        events.append(json.dumps(event).encode())
    return events


def metric_total(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.kafka
@pytest.mark.postgres
def test_rendered_daemon_command_ingests(
    tmp_path: Path,
    kafka_local: KafkaConnection,
    kafka_central: KafkaConnection,
    postgres_database: str,
    unique_name: Callable[[str], str],
) -> None:
    topic = unique_name("ukdf")
    port = free_port()
    out = tmp_path / "rendered"
    overlay = tmp_path / "testbed.yaml"
    overlay.write_text(
        json.dumps(
            {
                "central_kafka": {"bootstrap_servers": kafka_central.bootstrap_servers},
                "local_kafka": {"bootstrap_servers": kafka_local.bootstrap_servers},
                "registry": {"url": postgres_database, "create_schema": False},
                "opensearch": {"urls": []},
                "daemon": {
                    "port": port,
                    "group_id": unique_name("group"),
                    "topics": [topic],
                    "config": {
                        "dead_letters": {"topic": unique_name("dlq"), "partitions": 1},
                        "batching": {"max_wait_s": 0.2},
                    },
                },
                "install": {"prefix": sys.prefix, "config_dir": str(out / "config")},
                "site_map": {
                    "facilities": [
                        {
                            "name": "UKDF",
                            "prefixes": {
                                UKDF_RSE: {
                                    "rucio_prefix": SAMPLE_PREFIX,
                                    "fs_prefix": f"{SAMPLES / 'files'}/",
                                }
                            },
                        }
                    ]
                },
            }
        )
    )
    loaded = load_site(SITES_DIR / "ukdf.yaml", environment="dev", overlays=[overlay])
    instance = loaded.site.instance
    render(loaded, Target.systemd).write(out)

    unit = parse_unit((out / "systemd" / template_unit_name(ServiceName.daemon)).read_text())
    dropin = parse_unit((out / dropin_path(ServiceName.daemon, instance)).read_text())
    assert unit["Service.Type"] == ["notify"]
    environment = dict(value.split("=", 1) for value in dropin["Service.Environment"])
    (exec_start,) = unit["Service.ExecStart"]
    command = [expand(word, instance, environment) for word in shlex.split(exec_start)]
    assert command[0] == f"{sys.prefix}/bin/ingestd"
    assert command[-4:] == [
        f"{sys.prefix}/bin/ingestd",
        "run",
        "--config",
        str(out / "config" / instance / "daemon.yaml"),
    ]

    # As an operator would on a new host: the migration unit first (it creates the schema), then the daemon.
    migration = parse_unit((out / "systemd" / "ingestd-registry-upgrade@.service").read_text())
    migration_env = dict(
        value.split("=", 1)
        for value in parse_unit(
            (out / "systemd" / f"ingestd-registry-upgrade@{instance}.service.d" / "10-site.conf").read_text()
        )["Service.Environment"]
    )
    assert migration["Service.Type"] == ["oneshot"]
    (migrate_command,) = migration["Service.ExecStart"]
    migrated = subprocess.run(
        [expand(word, instance, migration_env) for word in shlex.split(migrate_command)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)} | migration_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    ensure_topics(make_admin(kafka_local), [topic], partitions=1)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.5)
    process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    process_env |= environment | {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "30000000"}
    log = (tmp_path / "daemon.log").open("w")
    process = subprocess.Popen(command, env=process_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            assert process.poll() is None, f"daemon exited {process.returncode}:\n{_tail(tmp_path)}"
            assert time.monotonic() < deadline, f"no READY=1; got {messages}\n{_tail(tmp_path)}"
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                continue

        producer = make_producer(kafka_local)
        events = sample_events(UKDF_RSE)
        for value in events:
            producer.produce(topic, value=value)
        assert producer.flush(30) == 0

        deadline = time.monotonic() + 90
        while metric_total(port, "ingestd_events_total") < len(events):
            assert process.poll() is None, f"daemon exited {process.returncode}:\n{_tail(tmp_path)}"
            assert time.monotonic() < deadline, f"events not all processed:\n{_tail(tmp_path)}"
            time.sleep(0.5)
        registered = metric_total(port, "ingestd_events_total", outcome="registered")
        skipped = metric_total(port, "ingestd_events_total", outcome="skipped")
        rejected = metric_total(port, "ingestd_events_total", outcome="rejected")
        assert (registered, skipped, rejected) == (5, 1, 1), _tail(tmp_path)

        from butler_registry import open_registry

        registry = open_registry(postgres_database)
        try:
            stats = registry.stats()
        finally:
            registry.close()
        assert stats.datasets == 5, stats  # two visit summaries, a raw, the two logs of the zip
        assert sum(stats.dimension_records.values()) > 0, stats

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, _tail(tmp_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        notify.close()


def _tail(folder: Path) -> str:
    lines = (folder / "daemon.log").read_text(errors="replace").splitlines()
    return "\n".join(lines[-40:])
