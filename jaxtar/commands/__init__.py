"""The CLI's subcommands, one module per subcommand (or family); each registers in ``jaxtar.commands._registry``.

``jaxtar.cli`` scans this package, imports every public module and builds its parser from the registry.
``_hugepages`` holds the huge-page re-execution the ``jaxtar`` command (and the benchmarks) start with.
"""
