"""Lambda entry point for the webhooks (API Gateway HTTP API -> Mangum -> FastAPI).

Kept thin and light: building the app reads the environment only; the database pool is opened by
the first request and kept by the container. Lifespan is off because Mangum would run it around
every invocation.
"""

from mangum import Mangum

from shared.logs import configure_logging
from shared.web.app import create_app

configure_logging()
app = create_app()
handler = Mangum(app, lifespan="off")
