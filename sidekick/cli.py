"""The command line: the typer app, its commands in the order --help lists them, and the
entry point (`sidekick.cli:main`, also `python -m sidekick`).

Runs on: the main thread. Each command's module parses its options and maps errors to exit
codes: `run` in sidekick.run_command; register, deregister, ls and doctor in
sidekick.operator_commands; render in sidekick.render_command; the shared options, `fail` and
the exit codes in sidekick.options.

Exit codes: 0 done, 1 nothing to do, 2 bad usage or configuration (etcd refusing the agent's
credentials, role or certificate at start-up included), 3 etcd unreachable, 4 the agent gave up
(a part of it kept dying; its lease is kept so a restarted agent resumes it).
"""

import sys
from typing import Annotated

import typer

from sidekick import __version__, operator_commands, render_command, run_command
from sidekick.options import EXIT_USAGE

app = typer.Typer(
    name="sidekick",
    help="Announce this node's Docker containers in etcd (v3), on a lease kept alive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"sidekick {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Announce Docker containers in etcd, the way confd and nginx expect them."""


@app.command()
def version() -> None:
    """Print the version."""
    print(f"sidekick {__version__}")


app.command("run")(run_command.run)
app.command("register")(operator_commands.register_command)
app.command("deregister")(operator_commands.deregister_command)
app.command("ls")(operator_commands.ls_command)
app.command("status", help="Alias of ls.")(operator_commands.ls_command)
app.command("doctor")(operator_commands.doctor_command)
app.command("render")(render_command.render)


def main() -> None:
    """Console-script entry point: a usage error (a misspelt flag or command) is one line on
    stderr, with click's suggestion in it, and exit 2, like every other error."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # click's UsageError; typer vendors click in newer releases, so match it by name
        if not any(kind.__name__ == "UsageError" for kind in type(exc).__mro__):
            raise
        ctx = getattr(exc, "ctx", None)
        message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
        if type(exc).__name__ != "NoArgsIsHelpError":  # `sidekick` alone: the help was shown
            where = ctx.command_path if ctx is not None else "sidekick"
            print(f"sidekick: error: {message} (see '{where} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)
