"""CLI subcommands of the higher layers (defences, red teaming, benchmarks); each registers with ``jaxtar.cli``."""
