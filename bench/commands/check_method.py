"""`bench check-method NAME`: run the conformance kit (``bench.testing``) on one registered method,
built-in or plugin (``--plugin FILE``, or installed with an entry point), and print a table of the
checks. Exit code 0 when every check passes or does not apply, 1 when one fails, 2 for an unknown
method or backbone."""
from __future__ import annotations

import argparse

from ..errors import UserError


def main(args: argparse.Namespace) -> int:
    import torch

    import methods
    from bench import testing

    try:
        method = methods.get(args.name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    source = methods.plugins.provenance(args.name)
    torch.set_num_threads(min(torch.get_num_threads(), 4))  # tiny models: more threads only wait
    results = testing.check_method(args.name, backbone=args.backbone)
    failed = testing.failures(results)
    where = f"plugin {source}" if source else "built-in"
    print(f"bench check-method: {method.name} ({where}) on "
          f"{args.backbone or 'small random backbones: ' + ', '.join(testing.FAMILIES)}")
    print(testing.format_table(results))
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed: {', '.join(sorted({r.check for r in failed}))}")
        return 1
    print(f"all {len(results)} checks passed")
    return 0
