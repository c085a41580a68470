"""Runtime plumbing shared by the api and the stats-fetcher (not part of their data contract)."""
