"""safety-audit: find, verify and protect the safety layers of local open-weight LLMs."""

__version__ = "0.1.0"
