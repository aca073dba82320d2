"""The command line's behaviour around the commands: one-line errors with the right exit code for every
failure (ours, the OS's, click's own usage errors, Ctrl-C).

Exit codes: 0 ok; 1 a `check` (or `audit`) regression; 3 a verdict the prompts cannot decide (inconclusive);
2 bad input or an unusable file (one line naming it); 130 Ctrl-C
(one line saying how to continue: every long job journals its finished work).
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape

from ..errors import AuditError
from ..io.reports import set_command_line
from ..render.tables import one_line

# soft_wrap: rich would break a long line at 80 columns when stderr is a pipe (a CI log), splitting a model path
# over three lines; a line is printed whole and the terminal or log viewer wraps it, if anything
err = Console(stderr=True, soft_wrap=True)


class AuditGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **kw):
        set_command_line(["safety-audit", *(sys.argv[1:] if args is None else args)])  # recorded in every report
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **kw)
        try:  # click's own usage errors as one line too (its default is a usage block of four)
            rv = super().main(args, prog_name, complete_var, False, **kw)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare group: its help, as click would show it
            click.echo(e.format_message(), err=True)
            sys.exit(e.exit_code)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            self._fail(e.format_message() + where, 2)
        except click.ClickException as e:
            self._fail(e.format_message(), e.exit_code)
        except click.Abort:
            self._fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AuditError as e:
            self._fail(str(e), 2)
        except OSError as e:  # a full disk, a read-only folder, a vanished file: the problem and the path
            self._fail(f"{e.strerror or type(e).__name__}: {e.filename}" if e.filename else str(e) or type(e).__name__, 2)
        except RecursionError:  # a file nested deeper than any reader here names itself; this is the backstop
            self._fail("an input is nested too deeply to read", 2)
        except KeyboardInterrupt:
            self._fail(f"interrupted; {RESUME.get(ctx.invoked_subcommand, 'run the same command again')}", 130)

    @staticmethod
    def _fail(message: str, code: int):
        err.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True)
        sys.exit(code)


RESUME = {  # what a Ctrl-C keeps, and how to continue (kill/resume tests in tests/test_resume.py)
    "scan": "run the same command again: hidden states already computed are cached and reused",
    "locate": "run the same command again: it resumes from its journal (next to --json, or in the cache)",
    "eval": "run the same command again: responses already generated are cached and reused",
    "harden": "add --resume to the same command to continue from its last checkpoint",
    "reference": "run the same command again: distilled rows and checkpoints are reused",
    "check": "run the same command again: the candidate's responses already generated are reused",
    "audit": "run the same command again: finished steps are kept, the current one resumes from its journal",
}
