"""zerotrain: plan, configure, train, benchmark and export GPT-style models under DeepSpeed ZeRO."""

__version__ = "0.1.0"


class UserError(ValueError):
    """A mistake in the user's input (config, data, paths). The message is one line that names the fix;
    the CLI prints it without a traceback and exits non-zero."""
