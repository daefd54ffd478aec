"""Deployments manifests: which release each robot runs, as a robot-side OTA agent reads it.

One append-only series per registered model under ``deployments/<model>/manifests/``: every
change of assignment (a rollout stage, a rollback, an abort) is a new manifest with the next
sequence number, never an edit. ``deployments/<model>/current.json`` is a copy of the newest one
for agents that want a single GET; the series is the record.

A manifest is checksummed: ``sha256`` is the SHA-256 of its canonical JSON (sorted keys, no
whitespace) without the ``sha256`` field, and each release names the SHA-256 of its
``policy.onnx``. An agent refuses a manifest whose checksum does not match and a model file whose
hash is not the one named. A robot that the manifest does not list runs no release
(teleoperated).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.storage import Lake, LakeError

DEPLOYMENTS_PREFIX = layout.DEPLOYMENTS
SCHEMA = "flywheel-deployments-v1"
RELEASES_PREFIX = layout.RELEASES


class ManifestError(ValueError):
    """A deployments manifest that must not be used (bad checksum, unknown release, bad id)."""


def model_prefix(model: str) -> str:
    return layout.deployments_prefix(model)


def manifest_key(model: str, sequence: int) -> str:
    return layout.deployments_manifest_key(model, sequence)


def current_key(model: str) -> str:
    return layout.deployments_current_key(model)


def release_ref(name: str, version: str) -> str:
    return f"{ids.name(name, what='release name')}/{ids.name(version, what='release version')}"


def split_ref(ref: str) -> tuple[str, str]:
    name, sep, version = str(ref).partition("/")
    if not sep:
        raise ManifestError(f"a release is named <name>/<version>, got {ref!r}")
    return ids.name(name, what="release name"), ids.name(version, what="release version")


def bundle_prefix(ref: str) -> str:
    name, version = split_ref(ref)
    return layout.release_prefix(name, version)


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def checksum(manifest: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != "sha256"})).hexdigest()


def release_entry(store: Lake, ref: str) -> dict:
    """What a manifest says about a release: its bundle and its model file's hash (from the
    bundle's SHA256SUMS, the hash the release itself vouches for)."""
    prefix = bundle_prefix(ref)
    try:
        sums = store.read_bytes(f"{prefix}/SHA256SUMS").decode()
    except (LakeError, FileNotFoundError, OSError):
        raise ManifestError(f"release {ref} has no bundle at {prefix}/ (SHA256SUMS missing)") from None
    digests = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in sums.splitlines() if "  " in line}
    if "policy.onnx" not in digests:
        raise ManifestError(f"release {ref}: SHA256SUMS does not list policy.onnx")
    name, version = split_ref(ref)
    return {"name": name, "version": version, "bundle": prefix, "onnx_sha256": digests["policy.onnx"]}


def build(*, model: str, sequence: int, assignments: dict[str, str | None], releases: dict[str, dict],
          rollout_id: str | None, stage: str | None, action: str, reason: str, by: str,
          at: dt.datetime | None = None) -> dict:
    """A checksummed manifest. ``assignments``: robot -> release ref, or None (teleoperated)."""
    assigned = {ids.robot_id(r): ref for r, ref in sorted(assignments.items()) if ref is not None}
    unknown = sorted({ref for ref in assigned.values()} - set(releases))
    if unknown:
        raise ManifestError(f"assignments name releases the manifest does not describe: {unknown}")
    body = {
        "schema": SCHEMA, "model": ids.name(model, what="model name"), "sequence": int(sequence),
        "created_at": (at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        "rollout_id": rollout_id, "stage": stage, "action": action, "reason": reason, "by": by,
        "releases": {ref: releases[ref] for ref in sorted(set(assigned.values()))},
        "assignments": assigned,
    }
    body["sha256"] = checksum(body)
    return body


def verify(manifest: dict) -> dict:
    """The manifest if its schema and checksum hold (what an OTA agent does first)."""
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(f"not a deployments manifest (schema {manifest.get('schema')!r})")
    if manifest.get("sha256") != checksum(manifest):
        raise ManifestError(f"deployments manifest {manifest.get('model')}#{manifest.get('sequence')}: checksum mismatch")
    for robot in manifest["assignments"]:
        ids.robot_id(robot)
    return manifest


def history(store: Lake, model: str) -> list[dict]:
    """Every manifest of ``model``, oldest first."""
    keys = sorted(o.key for o in store.list(layout.deployments_manifests_prefix(model)) if o.key.endswith(".json"))
    return [verify(store.read_json(k)) for k in keys]


def latest(store: Lake, model: str) -> dict | None:
    series = history(store, model)
    return series[-1] if series else None


def publish(store: Lake, manifest: dict) -> str:
    """Append ``manifest`` (its sequence must be the next one) and refresh current.json."""
    verify(manifest)
    key = manifest_key(manifest["model"], manifest["sequence"])
    previous = latest(store, manifest["model"])
    expected = (previous["sequence"] + 1) if previous else 1
    if manifest["sequence"] != expected or store.exists(key):
        raise ManifestError(f"deployments of {manifest['model']}: manifest #{manifest['sequence']} is not the next one "
                            f"(expected #{expected}); someone else changed the deployment, re-read and retry")
    store.write_json(key, manifest)
    store.write_json(current_key(manifest["model"]), manifest)
    return key


@dataclass(frozen=True)
class Assignment:
    robot: str
    release: dict | None  # the manifest's release entry, or None: teleoperated


def assignment(manifest: dict, robot: str) -> Assignment:
    ref = manifest["assignments"].get(ids.robot_id(robot))
    return Assignment(robot, None if ref is None else {**manifest["releases"][ref], "ref": ref})
