"""crawlproj: distributed, domain-partitioned broad crawling for Scrapy."""

__version__ = "0.1.0"
