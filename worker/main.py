"""For Celery's own command line, which needs an app at module level:

    celery -A worker.main worker --pool=solo     # or, better: qvl worker
    celery -A worker.main inspect ping

The app is built from the environment's settings when this module is imported;
nothing else imports it.
"""

from qvl.settings import Settings
from worker.app import create_app

app = create_app(Settings())
