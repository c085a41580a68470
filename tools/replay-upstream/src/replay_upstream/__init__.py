"""Replay upstream: an offline HTTP server imitating the COVID Tracking Project v1 API.

It serves an archived snapshot of the API (or a deterministic synthetic dataset of the same
schema) byte for byte, plus the paths derivable from it, so the stats-fetcher can run offline.
It also reads the v1 CSV-only backup of 2021 and the website's ``all-states-history.csv``
(converted), and can misbehave on purpose for fault tests (the ``--control`` API).

- :func:`load_dataset` / :func:`synthetic_dataset` give a :class:`Dataset`;
- :func:`create_app` turns one into a Starlette (ASGI) app (``control=True``: with the control
  API of :mod:`replay_upstream.control`);
- :func:`write_synthetic_dataset` writes the synthetic files, named like the archive's;
- ``python -m replay_upstream`` / ``replay-upstream`` runs the server (see ``--help``).
"""

from replay_upstream.app import create_app
from replay_upstream.dataset import Dataset, api_paths, load_dataset
from replay_upstream.synthetic import synthetic_dataset, write_synthetic_dataset

__all__ = [
    "Dataset",
    "api_paths",
    "create_app",
    "load_dataset",
    "synthetic_dataset",
    "write_synthetic_dataset",
]
