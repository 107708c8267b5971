"""Persistence: device-safe pickling, the safe file format, its archive, atomic writes."""
