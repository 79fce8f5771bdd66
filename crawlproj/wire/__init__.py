"""Shared by the dispatcher and the nodes: URLs, messages, the wire form of a request.

Imports nothing else of crawlproj, so both sides (and any other client) can use it alone.
"""
