"""Plain Scrapy reference spider: follow every link with Scrapy's LinkExtractor, one item a page.

Run by bench scripts with `scrapy runspider` and Scrapy's default settings (no crawlproj
project settings), so it measures Scrapy itself.

    -a seeds=FILE           one URL a line
    -a allowed=a.test,b.test  the spider's allowed_domains (Scrapy's offsite filter); default: any
    -a links=fast           link extraction as fast as Scrapy allows: every a/@href through
                            response.urljoin into a Request (no LinkExtractor)
    -a links=none           no links: one item a page of the seeds (Scrapy's floor per page,
                            when the seeds are every page)
"""

import scrapy
from scrapy.linkextractors import LinkExtractor


class PlainSpider(scrapy.Spider):
    name = "plain"

    def __init__(self, seeds="", allowed="", links="extractor", **kwargs):
        super().__init__(**kwargs)
        with open(seeds, encoding="utf-8") as f:
            self.start_urls = [line.strip() for line in f if line.strip()]
        if allowed:
            self.allowed_domains = [d for d in allowed.split(",") if d]
        self.links = LinkExtractor()
        if links == "fast":
            self.parse = self.parse_fast
        elif links == "none":
            self.parse = self.parse_none

    def parse(self, response):
        yield {"url": response.url, "status": response.status}
        for link in self.links.extract_links(response):
            yield response.follow(link, callback=self.parse)

    def parse_none(self, response):
        yield {"url": response.url, "status": response.status}

    def parse_fast(self, response):
        yield {"url": response.url, "status": response.status}
        if not isinstance(response, scrapy.http.TextResponse):
            return
        urljoin = response.urljoin
        for href in response.xpath("//a/@href").getall():
            try:
                request = scrapy.Request(urljoin(href), callback=self.parse_fast)
            except ValueError:  # no scheme after joining
                continue
            yield request
