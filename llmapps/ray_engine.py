"""Old home of the Ray engine, now ``llmapps.bench.ray_engine``; kept for old imports."""

from llmapps.bench.ray_engine import (
    RAY_MISSING,
    RayEngine,
    RayEngineConfig,
    RunWorker,
    import_ray,
    map_batches,
    ray_cluster,
    run_file_ray,
    worker_env,
)

__all__ = [
    "RAY_MISSING",
    "RayEngine",
    "RayEngineConfig",
    "RunWorker",
    "import_ray",
    "map_batches",
    "ray_cluster",
    "run_file_ray",
    "worker_env",
]
