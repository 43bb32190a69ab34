"""The embedded demo world: a synthetic GK-2A-like world on the real KO grid with known truth.

Modules, lowest first: ``tables`` (numbers), ``climate`` (cycles, normals fit), ``world`` (static
world), ``weather`` (one time), ``observations`` (stations, realism); the driver that writes the
raw-data contract is ``shared.ingest.demo_world``.
"""
