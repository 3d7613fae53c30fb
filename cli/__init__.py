"""The `mailops` command line."""
