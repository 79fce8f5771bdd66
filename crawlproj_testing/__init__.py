"""Test harness of crawlproj: synthetic web, simulated nodes, fuzzer, test resolver.

Never part of what ``crawlproj deploy`` ships to scrapyd (see docs/testing.md).
"""
