"""The Harvester benchmark: `python -m bench` (see bench/README.md)."""
