"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class AuditError(Exception):
    """Bad input or an unusable model/file; the message names the problem and the file."""

    def __init__(self, message: str, path: object | None = None):
        self.path = path
        super().__init__(f"{message}: {path}" if path is not None else message)
