"""Per-turn overhead of qvl over a raw Celery round trip (the same as `qvl bench queue`).

    REDIS_URL=redis://127.0.0.1:6379/0 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        python benchmarks/queue_overhead.py [--turns 200] [--concurrency 1 64]
"""

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "queue", *sys.argv[1:]]))
