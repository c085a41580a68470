"""gunicorn settings for the api (``gunicorn -c python:covid_stats_api.gunicorn_conf``).

The bind address and worker count come from the api's settings (``API_HOST``, ``API_PORT``,
``WEB_CONCURRENCY``) so that one table documents them; the rest is fixed here.
"""

from covid_stats_api.core.config import get_settings

_settings = get_settings()

bind = [f"{_settings.api_host}:{_settings.api_port}"]
workers = _settings.web_concurrency
worker_class = "uvicorn_worker.UvicornWorker"

# A worker silent for this long is killed and replaced.
timeout = 30
# On SIGTERM or a reload, workers get this long to finish in-flight requests.
graceful_timeout = 20
# Seconds an idle keep-alive connection is held open.
keepalive = 5

# Access logs are off: at the request rates this service is built for they would drown
# everything else. Errors go to stderr.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()

# gunicorn 25+ opens a control socket under $HOME by default: it would collide between
# instances on one machine and fail on a read-only root filesystem. Not needed here.
control_socket_disable = True
