"""Scenarios: the scenario runner and files, the in-process cluster, the growth demo."""
