"""Per-user rate limits, shared by every frontend process through Redis."""

from __future__ import annotations

import redis.asyncio as aioredis


class RateLimiter:
    """At most ``limit`` turns per ``window_s`` seconds for each key (a fixed window)."""

    def __init__(self, redis: aioredis.Redis, *, namespace: str, limit: int, window_s: int):
        self.redis, self.namespace, self.limit, self.window_s = redis, namespace, limit, window_s

    async def hit(self, platform: str, user_id: str) -> int | None:
        """Count one turn; return None if allowed, else the seconds until the next is."""
        if self.limit <= 0:
            return None
        key = f"{self.namespace}:rate:{platform}:{user_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=self.window_s, nx=True)  # (EXPIRE … NX needs Redis 7)
            pipe.incr(key)
            pipe.ttl(key)
            _, count, ttl = await pipe.execute()
        if count <= self.limit:
            return None
        return max(1, int(ttl))
