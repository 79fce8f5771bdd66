"""The Scrapy side of the dispatcher: scheduler, wire format of requests, lease bookkeeping."""
