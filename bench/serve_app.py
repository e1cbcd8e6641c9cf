"""chatbuffer's app as `chatbuffer serve` builds it: the webhook plus the admin API, the inspector
and the playground (no sweep loop). `BENCH_INGEST_APP=serve python -m bench ingest` measures ingest
through it, to show the operator's routes cost the webhook nothing."""

from shared.web.app import create_app

app = create_app(admin=True, playground=True)
