"""Floor 7 (beside the CLI): rich tables, progress bars and PNG plots of the reports the workflows return."""
