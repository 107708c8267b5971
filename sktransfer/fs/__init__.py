"""File-system primitives under every layer that writes files: atomic writes with
lock-based stale-temp removal (:mod:`.atomic`), shared by the disk cache and the
persistence layer."""
