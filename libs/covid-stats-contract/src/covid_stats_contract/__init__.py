"""The contract between the api and the stats-fetcher.

Everything both services must agree on lives here, and only here:

- ``keys``: the Redis key names;
- ``resources``: the upstream resources, their tables and documents;
- ``models``: the typed models of the upstream's records (the document format's fields);
- ``documents``: what a served document is (exact response bytes plus metadata) and how
  records become those bytes;
- ``snapshots``: how the fetcher publishes a snapshot of documents to Redis atomically and
  how the api reads one document of the current snapshot;
- ``schema``: the PostgreSQL schema as versioned SQL migrations, and the runner;
- ``records``: how records are written to PostgreSQL and how documents are rebuilt from it.
"""

__version__ = "0.1.0"
