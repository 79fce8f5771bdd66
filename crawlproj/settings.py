"""Settings of the crawlproj Scrapy project: Scrapy's own first, then one block per component.

Every crawlproj setting has its default here with a one-line comment. Components read them with
typed getters in ``from_crawler`` and fail at start with the setting's name when a value is bad.
Modes are Scrapy add-ons (crawlproj/addons.py): each puts its components into Scrapy's chains.
"""

BOT_NAME = "crawlproj"
SPIDER_MODULES = ["crawlproj.spiders"]
NEWSPIDER_MODULE = "crawlproj.spiders"

# -- Scrapy -------------------------------------------------------------------------------------
ROBOTSTXT_OBEY = True  # obey robots.txt (crawlproj's RobotsThrottleMiddleware, or Scrapy's with ROBOTS_THROTTLE_ENABLED off)
CONCURRENT_REQUESTS = 64
CONCURRENT_ITEMS = 4  # outputs of one response in flight at once (one task each); the broad spider yields an item and its new links a page
REMOTE_CONTROL_ENABLED = False  # no extra HTTP port, no writes under ~/.local/state
TELNETCONSOLE_ENABLED = False
ASYNCIO_EVENT_LOOP = "crawlproj.eventloop.PreciseEventLoop"  # timers on time, not up to 1 ms late (politeness delays)
LOG_LEVEL = "INFO"
LOG_FORMATTER = "crawlproj.logformatter.QuietLogFormatter"  # Scrapy's, without building per-page DEBUG lines no handler writes
STATS_CLASS = "crawlproj.stats.StatsCollector"  # Scrapy's MemoryStatsCollector without its wrapper on every attribute lookup
SIGNAL_DISPATCH_FAST = True  # crawlproj.signalmanager: the same receivers and results, their lookup and signatures resolved once, no task per receiver
DOWNLOAD_TIMEOUT = 30
FEED_EXPORT_ENCODING = "utf-8"
COMMANDS_MODULE = "crawlproj.commands"  # crawlproj's `scrapy crawl`: a bad setting in one line, exit 1 when all was refused

# -- Who crawls (crawlproj.identity; the add-on crawlproj.addons.Politeness sets USER_AGENT) -------
BOT_CONTACT = ""  # URL or e-mail where site operators reach you; goes into the User-Agent "crawlproj/<version> (+CONTACT)"
# USER_AGENT = "..."  # set here or with -s, it replaces crawlproj's User-Agent (BOT_CONTACT is then not sent)

# -- Links seen lately (crawlproj.linkfilter): repeats dropped before they become Requests ------
RECENT_LINKS_SIZE = 200000  # canonical URLs remembered per process; exact dedup stays downstream

# -- Broad spider ---------------------------------------------------------------------------------
BROAD_SCOPE = "domain"  # "domain": a link's registered domain = its page's; "allowed": only BROAD_ALLOWED_DOMAINS; "any"
BROAD_ALLOWED_DOMAINS: list[str] = []  # domains (and their subdomains) always in scope
BROAD_ALLOW: list[str] = []  # regexes; when set, a link must match one of them
BROAD_DENY: list[str] = []  # regexes; a link matching one of them is dropped
BROAD_ITEM_HEADERS = ["Content-Type", "Last-Modified", "ETag", "Server"]  # headers kept in items
BROAD_REDIS_URL = "redis://127.0.0.1:6379/0"  # where `-a seeds=redis` reads <spider>:start_urls
BROAD_REDIS_START_URLS_KEY = "%(name)s:start_urls"  # the scrapy-redis key convention

# -- Modes (Scrapy add-ons, crawlproj/addons.py) -------------------------------------------------
ADDONS = {
    "crawlproj.addons.Politeness": 100,  # robots.txt (RFC 9309) + one fetch at a time per politeness key
    "crawlproj.addons.Hardening": 200,  # SSRF guard, crawler-trap guard, counted decompression bombs
    "crawlproj.addons.MongoDB": 300,  # items to MongoDB (the pipeline is off while MONGO_URI is empty)
    "crawlproj.addons.Timings": 400,  # timings of every operation that can get slow
    "crawlproj.addons.Revisits": 450,  # conditional GET of revisits; sitemaps when SITEMAP_ENABLED
    # "crawlproj.addons.DispatcherNode": 500,  # distributed mode; `crawlproj cluster` and `crawlproj schedule` add it
}

EXTENSIONS = {
    "crawlproj.signalmanager.SignalDispatch": -2000,  # Scrapy's signals, each sent with less work (SIGNAL_DISPATCH_FAST)
    "crawlproj.setting_checks.ScrapySettingsCheck": -1000,  # Scrapy's typed settings checked first, each bad one named
    "crawlproj.linkfilter.RecentLinks": 0,  # links seen lately, shared by the spider and the scheduler
    "crawlproj.extensions.progress.Progress": 500,
}

# -- Progress -------------------------------------------------------------------------------------
PROGRESS_INTERVAL = 0.0  # seconds between progress lines on stderr; 0 = none
PROGRESS_STATS_FILE = ""  # write the final stats as JSON here at close; "" = don't

# -- Dispatcher node (add-on crawlproj.addons.DispatcherNode: crawlproj.scheduling.scheduler) -----
DISPATCHER_ENDPOINT = "tcp://127.0.0.1:5570"  # the dispatcher's ROUTER socket
DISPATCHER_NODE_NAME = ""  # stable node name; "" = <hostname>-<scrapyd job id, or pid>
DISPATCHER_NODE_HEADER = ""  # if set, leased requests carry the node name in this header
DISPATCHER_QUEUE_TARGET = 512  # leased requests kept queued + in flight (credit asked for up to it)
DISPATCHER_PUSH_BATCH = 500  # discovered requests (and acks) per message
DISPATCHER_FLUSH_INTERVAL = 0.05  # seconds between flushes of pushes and acks
DISPATCHER_HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats
DISPATCHER_TIMEOUT = 10.0  # no word from the dispatcher this long: register again
DISPATCHER_STATS_INTERVAL = 2.0  # seconds between stats reports to the dispatcher
DISPATCHER_REPLAY_SECONDS = 30.0  # pushes and acks sent again to a restarted dispatcher
DISPATCHER_HANDOFF_TIMEOUT = 120.0  # a revoked partition is handed off after this long even if its requests have not ended
DISPATCHER_CURVE_SECRET_KEY_FILE = ""  # CURVE: this node's key pair (crawlproj keys: clients/<name>.key_secret)
DISPATCHER_CURVE_SERVER_KEY_FILE = ""  # CURVE: the dispatcher's public key (crawlproj keys: dispatcher.key)
POLITENESS_KEY = "domain"  # "domain" (registered domain, eTLD+1) or "host"

# -- robots.txt and politeness (add-on crawlproj.addons.Politeness: crawlproj.politeness) ---------
# robots.txt is obeyed when ROBOTSTXT_OBEY is on; the politeness key is POLITENESS_KEY.
ROBOTS_THROTTLE_ENABLED = True  # robots.txt per RFC 9309 + one fetch at a time per key; False: Scrapy's robots.txt
ROBOTS_THROTTLE_DELAY = None  # seconds between fetches on one key; None = DOWNLOAD_DELAY
ROBOTS_THROTTLE_KEY_DELAYS: dict[str, float] = {}  # per-key delay overrides {key: seconds}
ROBOTS_THROTTLE_ADAPTIVE = False  # also wait latency x FACTOR after an answer (like AutoThrottle)
ROBOTS_THROTTLE_ADAPTIVE_FACTOR = 1.0  # adaptive delay = this x observed download latency
ROBOTS_THROTTLE_ADAPTIVE_MAX_DELAY = 30.0  # cap of the adaptive delay, seconds
ROBOTS_THROTTLE_MEMORY = 100000  # politeness keys kept in memory (LRU); the rest stay in SQLite
ROBOTS_CRAWL_DELAY_MAX = 30.0  # cap of a robots.txt Crawl-delay, seconds
ROBOTS_CACHE_TTL = 86400.0  # seconds a robots.txt copy is used (RFC 9309: at most 24 h)
ROBOTS_CACHE_MEMORY = 10000  # parsed robots.txt files kept in memory (LRU)
ROBOTS_RETRY_DELAY = 5.0  # seconds before the first retry of a 5xx / unreachable robots.txt (doubles)
ROBOTS_RETRY_MAX_DELAY = 3600.0  # cap of the doubling retry back-off, seconds
ROBOTS_HOLD_TIME = 10.0  # requests wait for a failing robots.txt until it has failed this long, then drop
ROBOTS_FALLBACK_AFTER = 30 * 86400.0  # unreachable this long: use the last good copy (RFC 9309)
ROBOTS_STATE_FILE = ""  # SQLite state file; "" = <CRAWLPROJ_STATE_DIR>/<node name>/politeness.sqlite3
ROBOTS_STORE_FLUSH_INTERVAL = 0.5  # seconds between batched writes of the state file
CRAWLPROJ_STATE_DIR = "state"  # where nodes keep their local state files

# -- Hostile input (add-on crawlproj.addons.Hardening: crawlproj.security) -----------------------
SSRF_ENABLED = True  # refuse hosts that resolve to private, loopback, link-local, metadata... addresses
SSRF_ALLOWED_NETWORKS: list[str] = []  # CIDRs always allowed
SSRF_BLOCKED_NETWORKS: list[str] = []  # CIDRs refused on top of the non-public ones
DOWNLOAD_MAXSIZE = 16 * 1024 * 1024  # Scrapy's 1 GiB x CONCURRENT_REQUESTS is a memory bomb; also caps decompression
DOWNLOAD_WARNSIZE = 4 * 1024 * 1024  # a warning in the log past this size (Scrapy: 32 MiB)
TRAP_GUARD_ENABLED = True  # refuse trap URLs (traps/refused/<reason>)
TRAP_MAX_DEPTH = 0  # request depth (hops from a seed, across hosts too); 0 = no cap
TRAP_MAX_SEGMENT_REPEATS = 3  # one path segment at most this often (/a/b/a/b/a/b/a/...); 0 = no cap
TRAP_MAX_PAGES_PER_HOST = 50000  # requests per host and node process; 0 = no cap
TRAP_HOSTS_TRACKED = 100000  # hosts whose request count is kept (LRU)

# -- MongoDB item pipeline (add-on crawlproj.addons.MongoDB; off while MONGO_URI is empty) -------
MONGO_URI = ""  # mongodb://host:port/ (or mongodb+srv://); "" = the pipeline is off
MONGO_DATABASE = "crawlproj"  # database the items go to
MONGO_COLLECTION = "pages"  # collection of every item class not in MONGO_COLLECTIONS
MONGO_COLLECTIONS: dict[str, str] = {}  # {"dotted.path.ItemClass": "collection"}; subclasses follow
MONGO_BATCH_SIZE = 100  # upserts per bulk_write; a full batch is written at once
MONGO_FLUSH_INTERVAL = 1.0  # seconds the oldest item waits for its batch to fill before it is written
MONGO_WRITE_CONCERN = {"w": "majority"}  # pymongo WriteConcern arguments; w=0 is refused
MONGO_INDEXES: list = []  # extra indexes: "f" or {"keys": [["f", 1]], "collection": c, "unique": True}
MONGO_QUERY_PATHS: list = []  # fields queried by: "f", ["a", "b"], {"fields": [...], "collection": c}
MONGO_ALLOW_UNINDEXED = False  # True: a query path without an index is a warning, not a refusal
MONGO_SPILL_DIR = ""  # spill files while MongoDB fails; nodes may share it; "" = <CRAWLPROJ_STATE_DIR>/mongo-spill
MONGO_SPILL_MAX_BYTES = 1024**3  # spill budget; when full (and the buffer too) the engine is paused
MONGO_SPILL_AFTER = 5.0  # seconds an item waits in memory for a failing MongoDB before it is spilled
MONGO_BUFFER_MAX_ITEMS = 1000  # items waiting in memory (>= MONGO_BATCH_SIZE); more: spill or pause
MONGO_RETRY_BACKOFF_MIN = 0.5  # seconds before the first retry of a failed write; doubles per failure
MONGO_RETRY_BACKOFF_MAX = 30.0  # cap of the retry back-off, seconds
MONGO_CONNECT_TIMEOUT = 2.0  # seconds to find and connect to the server: how fast an outage is noticed
MONGO_SOCKET_TIMEOUT = 30.0  # seconds a bulk_write may take before it counts as failed (and is re-sent)
MONGO_STATS_INTERVAL = 10.0  # seconds between updates of the latency percentiles in the stats

# -- Timings (add-on crawlproj.addons.Timings: crawlproj.observability) ---------------------------
TIMINGS_ENABLED = True  # timing/<op>/* stats, TIMINGS log lines, timings in the node's dispatcher reports
TIMINGS_LOG_INTERVAL = 60.0  # seconds between TIMINGS lines (percentiles of that window, per operation)
TIMINGS_LOG_SAMPLE_RATE = 0.001  # share of single operations logged as TIMING lines (0 = none, 1 = all)
TIMINGS_LOG_SLOW_MS = 1000.0  # an operation slower than this (ms) is always logged as a TIMING line
TIMINGS_LOG_FILE = ""  # also write TIMING/TIMINGS records as JSON lines to this file; "" = don't

# -- Revisits and sitemaps (add-on crawlproj.addons.Revisits: crawlproj.middlewares.revisit, crawlproj.sitemaps)
REVISIT_CONDITIONAL_GET = True  # a revisit sends its stored validators (If-None-Match / If-Modified-Since)
SITEMAP_ENABLED = False  # read the sitemaps of robots.txt (or /sitemap.xml) of every authority the crawl reaches
SITEMAP_MAX_URLS = 50000  # entries read per sitemap file (the protocol's limit, at most); the rest is cut and counted
SITEMAP_MAX_BYTES = 50 * 1024 * 1024  # bytes per sitemap file uncompressed (the protocol's limit, at most); cut there

# -- Long crawls: robots.txt that cannot decide yet (docs/politeness.md) --------------------------
ROBOTS_FETCH_TIMEOUT = 20.0  # seconds a robots.txt fetch may take (not DOWNLOAD_TIMEOUT); longer: unreachable
ROBOTS_POSTPONE_MAX = 7 * 86400.0  # dispatcher nodes postpone requests of an unreachable robots.txt until it has failed this long, then drop

# -- Revisit schedule (docs/revisits.md: acks carry the outcome, the dispatcher schedules) -------
REVISIT_POLICY = "none"  # none (one pass, no outcome in acks) | fixed (every REVISIT_INTERVAL) | adaptive
REVISIT_INTERVAL = 86400.0  # seconds: fixed's interval, adaptive's first one
REVISIT_MIN_INTERVAL = 3600.0  # adaptive: the interval never goes below this (seconds)
REVISIT_MAX_INTERVAL = 30 * 86400.0  # adaptive: ... nor above this (seconds)
REVISIT_KEY_POLICIES: dict[str, str] = {}  # {politeness key: none|fixed|adaptive}, overriding REVISIT_POLICY
REVISIT_SHARE = 0.5  # most of a key's fetches that are revisits while new URLs of the key wait (the node's per-key queues)
REVISIT_RETRY_BASE = 60.0  # seconds: a 5xx / no answer is retried after this x 2^(failures-1), at most the interval
REVISIT_RETIRE_AFTER = 3  # consecutive 404/410 answers after which a URL leaves the schedule (retires)

# -- Downloads (crawlproj.download: aiohttp's HTTP/1.1 client reading big bodies in big reads) ----
DOWNLOAD_HANDLERS = {"http": "crawlproj.download.AiohttpDownloadHandler", "https": "crawlproj.download.AiohttpDownloadHandler"}  # crawlproj.download.HTTP11DownloadHandler: Twisted's client
DOWNLOAD_READ_SIZE = 4 * 1024 * 1024  # bytes per socket read (Twisted's 64 KiB: one loop turn per 64 KiB of a body)
