"""The local Ray pins its own state API for its processes, and only for them."""

from __future__ import annotations

import os


def test_local_ray_processes_find_their_own_state_api(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0)
    def api_address() -> str | None:
        return os.environ.get("RAY_API_SERVER_ADDRESS")

    pinned = ray.get(api_address.remote())
    # Ray Train's cleaner in these processes asks this cluster's dashboard, not the newest
    # cluster's on the machine.
    assert pinned is not None
    assert pinned.endswith(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
    # This process keeps its own environment (its `ray job submit` goes where it says).
    assert "RAY_API_SERVER_ADDRESS" not in os.environ
