"""Recordings for the people who need them: the index, the page and REST API, webhooks,
Prometheus metrics and retention (contract: "Wave 2 additions").

Everything here runs on the B2BUA's own event loop beside the media, and is built so that
it never makes the media wait: reads answer from the index (never a walk of the tree), the
WAV is streamed by the kernel (sendfile), webhooks go out from a durable outbox a few at a
time, and metrics are read from the media core's counters only when scraped.
"""
