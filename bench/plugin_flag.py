"""The ``--plugin PATH_OR_MODULE`` flag: load a method from a ``.py`` file or a module as the
command line is parsed (``methods.plugins.load``), so every command sees it in the registry, and
export it in ``BENCH_PLUGINS`` for the worker processes the command starts.

Nothing is imported until the flag is given: ``bench --help`` stays instant. A plugin that cannot
load is one ``error: ...`` line and exit code 2 (argparse's own path for a bad flag), before the
command has written anything.
"""
from __future__ import annotations

import argparse

HELP = ("load methods from a .py file or an importable module that registers them with @methods.register "
        "(repeatable; also read from $BENCH_PLUGINS, os.pathsep-separated)")


class LoadPlugin(argparse.Action):
    """argparse action: load the plugin now, keep the list of those given."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            from methods import plugins  # the registry loads installed plugins (entry points) first

            plugins.load(value)
        except ValueError as exc:  # methods.PluginError (also raised by the first import of methods)
            if type(exc).__name__ != "PluginError":
                raise
            raise argparse.ArgumentError(self, " ".join(str(exc).split())) from None
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), value])


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action=LoadPlugin, default=[], metavar="PATH_OR_MODULE", help=HELP)
