"""Lambda entry point for the operator's view: the admin API and the inspector page.

A function of its own (API Gateway routes /admin, /admin/assets/*, /admin/api/*), so the webhook's
cold start never pays for it. Off unless ADMIN_TOKEN is set.
"""

from mangum import Mangum

from shared.logs import configure_logging
from shared.web.admin import create_admin_app

configure_logging()
app = create_admin_app()
handler = Mangum(app, lifespan="off")
