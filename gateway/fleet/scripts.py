"""The Lua scripts that make read-compare-write steps atomic in Redis.

Each one exists because the plain command would let a process act on someone else's key:
renewing or releasing a lease another process took over, deleting the trip key of a newer
period, or overwriting an operator's newer override with an older one.
"""

from __future__ import annotations

from typing import Final

# KEYS[1] lease, ARGV[1] me, ARGV[2] ttl ms -> 1 if I hold it now (kept, or taken because free).
ACQUIRE_OR_RENEW: Final = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] trial claim, ARGV[1] me, ARGV[2] ttl ms -> {1, 0} if mine now (free, or already mine: a
# race restarted after a blip; never shortened, it may be held for a running trial), else
# {0, ms until the holder's claim lapses}.
CLAIM_OR_WAIT: Final = """
local holder = redis.call('get', KEYS[1])
if holder == false then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0}
end
if holder == ARGV[1] then
  if redis.call('pttl', KEYS[1]) < tonumber(ARGV[2]) then redis.call('pexpire', KEYS[1], ARGV[2]) end
  return {1, 0}
end
return {0, redis.call('pttl', KEYS[1])}
"""

# KEYS[1] key, ARGV[1] expected value, ARGV[2] ttl ms -> 1 if the key is still mine and now lasts ttl.
EXTEND_IF_VALUE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] key, ARGV[1] expected value -> 1 if deleted.
DELETE_IF_VALUE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# KEYS[1] trip key, KEYS[2] channel, ARGV[1] trip id, ARGV[2] message: the period is over.
CLOSE_PERIOD: Final = """
local stored = redis.call('get', KEYS[1])
if stored then
  local ok, data = pcall(cjson.decode, stored)
  if ok and type(data) == 'table' and data['trip_id'] == ARGV[1] then redis.call('del', KEYS[1]) end
end
return redis.call('publish', KEYS[2], ARGV[2])
"""

# KEYS[1] overrides hash, KEYS[2] channel; ARGV[1] field, ARGV[2] value (JSON with at_ms),
# ARGV[3] at_ms, ARGV[4] message -> 1 if written and announced, 0 if a newer one is stored.
WRITE_OVERRIDE_IF_NEWER: Final = """
local stored = redis.call('hget', KEYS[1], ARGV[1])
if stored then
  local ok, data = pcall(cjson.decode, stored)
  if ok and type(data) == 'table' and tonumber(data['at_ms']) and tonumber(data['at_ms']) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('publish', KEYS[2], ARGV[4])
return 1
"""
