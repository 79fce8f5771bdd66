"""Spiders of the project: the broad crawler."""
