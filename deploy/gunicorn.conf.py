"""gunicorn settings for dho-share: ``gunicorn -c deploy/gunicorn.conf.py 'sharing_api.wsgi:app'``.

Configuration comes from the same ``DHO_*`` environment as ``dho-share serve``; ``DHO_BIND`` and
``DHO_WORKERS`` choose the socket and the number of processes.
"""

import multiprocessing
import os

from sharing_api.metrics import use_multiprocess_dir, worker_exited
from sharing_api.serving import require_safe_bind
from sharing_api.settings import Settings

bind = os.environ.get("DHO_BIND", "127.0.0.1:8080")
require_safe_bind(bind.rsplit(":", 1)[0].strip("[]"), Settings().base_url)
workers = int(os.environ.get("DHO_WORKERS", str(min(4, multiprocessing.cpu_count() * 2))))
# gthread: each thread serves one request at a time; a client dribbling its headers holds one. With
# 20 such slow clients in front of 2 workers x 4 threads, 4 of 10 other requests timed out (5 s) when
# gunicorn faced them directly. Behind deploy/nginx (which passes on only complete requests) all 10
# were served: tests/deploy/test_proxy.py. So never expose gunicorn itself; bind it to the LAN only.
worker_class = "gthread"
threads = int(os.environ.get("DHO_THREADS", "4"))
accesslog = None  # URLs are not logged here; the audit log records access
errorlog = "-"
loglevel = "error"  # gunicorn warnings quote whole malformed header lines, tokens included
graceful_timeout = 10
# Prometheus multiprocess mode (sharing_api/metrics.py): each worker writes its metrics into one directory
# that /metrics sums; a dead worker's files are marked by child_exit.
use_multiprocess_dir()
child_exit = worker_exited
timeout = 30
