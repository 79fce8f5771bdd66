"""Plain Scrapy reference spider: follow every link with Scrapy's LinkExtractor, one item a page.

Run by bench scripts with `scrapy runspider` and Scrapy's default settings (no crawlproj
project settings), so it measures Scrapy itself.
"""

import scrapy
from scrapy.linkextractors import LinkExtractor


class PlainSpider(scrapy.Spider):
    name = "plain"

    def __init__(self, seeds="", **kwargs):
        super().__init__(**kwargs)
        with open(seeds, encoding="utf-8") as f:
            self.start_urls = [line.strip() for line in f if line.strip()]
        self.links = LinkExtractor()

    def parse(self, response):
        yield {"url": response.url, "status": response.status}
        for link in self.links.extract_links(response):
            yield response.follow(link, callback=self.parse)
