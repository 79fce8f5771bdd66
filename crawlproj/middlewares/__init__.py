"""Downloader middlewares: robots.txt and politeness (RobotsThrottle), Scrapy's robots.txt fixed."""
