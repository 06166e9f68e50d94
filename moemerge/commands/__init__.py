"""The command line beside the bare merge: one module per verb (parsing and printing only; the work is done by the
wings below), the options they share (options), and mergekit-moe's flags (mergekit_flags)."""

from moemerge.commands import evaluate, plan, push, route, tune, ui, verify

SUBCOMMANDS = {
    "route": route.app,
    "eval": evaluate.app,
    "tune": tune.app,
    "verify": verify.app,
    "plan": plan.app,
    "push": push.app,
    "ui": ui.app,
}
