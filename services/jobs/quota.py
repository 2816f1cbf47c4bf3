"""Per-owner counts of jobs in flight (queued or running), for limits such as "at most 2 fine-tunes at once".

Each owner and job type has a sorted set of job ids (scored by when the slot was taken). A slot is taken
atomically, with the check, by one Lua script before the job is created, and given back when the job ends
(`JobStore.transition` to a terminal status). The same script first drops ids whose job has ended or expired,
so a slot whose release was missed (a crash between the two) never stays taken.
"""

import time

import redis

# KEYS: the owner's in-flight set. ARGV: job id, limit, now, job hash key prefix, grace s.
# A job id without a job hash is one being created right now (its slot is taken before the record is written):
# it keeps its slot for `grace` seconds. The job hashes are read by name from ARGV[4] (one Redis, no cluster).
# Returns 0 when the slot was taken, else the number of jobs in flight.
_RESERVE = """
local now = tonumber(ARGV[3])
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local status = redis.call('HGET', ARGV[4] .. id, 'status')
  if status == 'succeeded' or status == 'failed' or status == 'canceled' then
    redis.call('ZREM', KEYS[1], id)
  elseif not status and tonumber(redis.call('ZSCORE', KEYS[1], id)) < now - tonumber(ARGV[5]) then
    redis.call('ZREM', KEYS[1], id)
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return n end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return 0
"""


class InFlightJobs:
    def __init__(self, client: redis.Redis, prefix: str, job_key_prefix: str, grace_s: float = 120.0):
        self.r = client
        self.prefix = prefix
        self.job_key_prefix = job_key_prefix
        self.grace_s = grace_s
        self._reserve = client.register_script(_RESERVE)

    def _key(self, owner: str, job_type: str) -> str:
        return f"{self.prefix}:owner:{owner}:inflight:{job_type}"

    def reserve(self, owner: str, job_type: str, job_id: str, limit: int) -> int | None:
        """Take a slot for `job_id`. None when taken; else how many jobs are in flight (the limit is reached)."""
        n = self._reserve(keys=[self._key(owner, job_type)],
                          args=[job_id, limit, time.time(), self.job_key_prefix, self.grace_s])
        return None if n == 0 else int(n)

    def release(self, owner: str, job_type: str, job_id: str) -> None:
        self.r.zrem(self._key(owner, job_type), job_id)

    def count(self, owner: str, job_type: str) -> int:
        return int(self.r.zcard(self._key(owner, job_type)))
