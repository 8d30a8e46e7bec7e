"""Model versions: `<encoder slug>-r<revision>`, persisted in the store, monotonic per project and encoder."""

from __future__ import annotations

import time

from cliplabel.core.domain import ModelVersion
from cliplabel.store import Store


def version_name(slug: str, revision: int) -> str:
    return f"{slug}-r{revision}"


def current_version(store: Store, project_id: str, encoder_id: str, slug: str) -> ModelVersion:
    """The newest accepted version of a project; the zero-shot `r0` is created on first use.

    Every process reads this from the shared store, so a version added by one process (a retrain) is what all others
    stamp on their next prediction.
    """
    versions = store.list_versions(project_id, encoder_id)
    if versions:
        return versions[-1]
    first = ModelVersion(project_id=project_id, encoder_id=encoder_id, revision=0, name=version_name(slug, 0),
                         created_at=time.time(), note="zero-shot prompt ensembles")
    # Another process may have created r0 at the same moment; either way r0 is now there.
    store.add_version(first)
    return store.list_versions(project_id, encoder_id)[0]


def known_versions(store: Store, project_id: str, encoder_id: str, slug: str) -> list[str]:
    """The names of a project's versions, oldest first, read only (`GET /versions` writes nothing).

    A project set up but never retrained serves the zero-shot r0 (listed even before it is recorded); a project
    never set up (any id a client sends) has none: an empty list.
    """
    versions = store.list_versions(project_id, encoder_id)
    if versions:
        return [v.name for v in versions]
    return [version_name(slug, 0)] if store.get_project(project_id) is not None else []
