"""fedgrpc's benchmark suite: the same workloads on fedgrpc and on Flower, on loopback.

Run it with ``python -m bench`` (see :mod:`bench.cli`). The modules that run inside Flower's
processes (:mod:`bench.workload`, :mod:`bench.flower_server`, :mod:`bench.flower_client`)
import neither fedgrpc nor anything else from this package but :mod:`bench.workload`, so
they also run from a separate virtual environment holding Flower: Flower needs
``protobuf<7`` and fedgrpc ``protobuf>=7``, which cannot share one environment.
"""
