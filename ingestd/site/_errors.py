"""Errors of the site-file tooling.

Every error names the file (and, when it can, the dotted key path) an operator must
edit; none of them is transient, so the CLI reports and exits with status 2.

::

    SiteError (ValueError)
    ├── SiteFileError        a file cannot be read, parsed, or layered (extends / overlay rules)
    ├── SiteValidationError  the merged site does not satisfy the site model
    └── RenderError          the site is valid but a target cannot express it
"""

from __future__ import annotations

__all__ = ["RenderError", "SiteError", "SiteFileError", "SiteValidationError"]


class SiteError(ValueError):
    """Base of every site-file problem; the message is meant for an operator."""


class SiteFileError(SiteError):
    """A site or overlay file cannot be read, parsed or layered."""


class SiteValidationError(SiteError):
    """The merged site fails validation; the message has one line per problem, each naming its file."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class RenderError(SiteError):
    """A valid site cannot be rendered for one target (e.g. a service config its own loader refuses)."""
