"""Operator tools behind the ``crawlproj`` command: cluster, demo, deploy, process runners."""
