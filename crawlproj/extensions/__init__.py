"""Scrapy extensions of a node: progress lines and the stats file."""
