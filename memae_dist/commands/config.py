"""``memae-dist config``: the experiment config a ``train`` with the same flags would run, as a
commented YAML recipe: every setting, what it means, and a file to edit and train from."""

from __future__ import annotations

import argparse

from memae_dist.commands.common import (
    add_experiment_flags,
    experiment_config,
    file_target,
    given_flags,
)


def register(sub) -> None:
    p = sub.add_parser("config", help="print every setting of a recipe (with what it means) as "
                                      "a YAML recipe to edit")
    add_experiment_flags(p, address=False)
    p.add_argument("--out", help="write the recipe to this file instead of printing it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memae_dist.configdoc import render
    from memae_dist.data.atomic import atomic_local
    from memae_dist.data.storage import is_remote, local_path
    from memae_dist.errors import UserError
    from memae_dist.evaluate.plots import writing

    if args.out is not None:
        if is_remote(args.out):
            raise UserError(f"--out {args.out}: a recipe is a local file ('train --config' "
                            "reads one on this machine)")
        file_target(args.out, "recipe.yaml", inputs=(args.config,))
    cfg = experiment_config(args)
    for uri in (cfg.data.path, cfg.run.storage):
        if uri:  # as train would: an s3:// URI holding user:password is refused, unseen
            is_remote(uri)
    given = [*given_flags(args).values(), *(f"--set {item}" for item in args.set or [])]
    header = [f"memae-dist experiment config: {args.config or 'the built-in defaults'}"
              + (f", with {' '.join(given)}" if given else ""),
              "Every setting with what it means; train from it with "
              "'memae-dist train --config FILE'."]
    text = render(cfg, header)
    if args.out is None:
        print(text, end="")
        return 0
    target = local_path(args.out)
    with writing(target), atomic_local(target, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"config: {args.out}")
    return 0
