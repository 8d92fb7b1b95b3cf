"""What a trial actor is started with: no credentials in its runtime env."""

from __future__ import annotations

from memae_dist.tune.trainable import keep_credentials_out_of_trials


class Probe:
    pass


def test_trial_runtime_envs_carry_no_aws_keys(monkeypatch):
    from ray.tune.execution import class_cache

    # Ray Tune's own list, as a fresh process has it (a sweep run earlier in this process has
    # already trimmed the module's copy).
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE",
                        set(class_cache.ENV_VARS_TO_PROPAGATE) | aws)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-that-must-stay-home")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-that-must-stay-home")

    def env_vars() -> dict:
        remote = class_cache._ActorClassCache().get(Probe)  # what Tune starts each trial with
        return remote._default_options["runtime_env"]["env_vars"]

    assert "AWS_SECRET_ACCESS_KEY" in env_vars()  # what Ray Tune does on its own
    keep_credentials_out_of_trials()
    assert not [name for name in env_vars() if name.startswith("AWS_")]
    # Again, as a second sweep in one process does: still nothing.
    keep_credentials_out_of_trials()
    assert not [name for name in env_vars() if name.startswith("AWS_")]
