"""The Lua scripts that make read-compare-write steps atomic in Redis.

Each one exists because the plain command would let a process act on someone else's key:
renewing or releasing a lease another process took over, deleting the trip key of a newer
period, or overwriting an operator's newer override with an older one.
"""

from __future__ import annotations

from typing import Final

# KEYS[1] lease, ARGV[1] me, ARGV[2] ttl ms -> 1 if I hold it now (kept, or taken because free). A
# lease without a TTL (a stray key) counts as free: no stray key may stop the fleet from probing.
ACQUIRE_OR_RENEW: Final = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if holder and redis.call('pttl', KEYS[1]) ~= -1 then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
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

# KEYS[1] overrides hash, KEYS[2] channel, KEYS[3..] trip keys the command ends; ARGV[1] field,
# ARGV[2] mode, ARGV[3] origin, ARGV[4] route, ARGV[5] target; ARGV[6], ARGV[7]: the seq and epoch the
# command followed ('' for a command given now: it always wins; seq -1: only if nothing is stored);
# ARGV[8] a fresh epoch, used if the hash has none yet (new, or Redis restarted empty).
# -> {1, epoch, new seq} if written and announced, else {0, epoch, stored seq}.
WRITE_OVERRIDE: Final = """
local epoch = redis.call('hget', KEYS[1], '_epoch')
if not epoch then
  epoch = ARGV[8]
  redis.call('hset', KEYS[1], '_epoch', epoch)
end
local stored = redis.call('hget', KEYS[1], ARGV[1])
local seq = 0
if stored then
  local ok, data = pcall(cjson.decode, stored)
  if ok and type(data) == 'table' and tonumber(data['seq']) then seq = math.floor(tonumber(data['seq'])) end
end
if ARGV[6] ~= '' and stored and (epoch ~= ARGV[7] or seq ~= tonumber(ARGV[6])) then return {0, epoch, seq} end
seq = seq + 1
redis.call('hset', KEYS[1], ARGV[1], cjson.encode({mode = ARGV[2], seq = seq}))
for i = 3, #KEYS do redis.call('del', KEYS[i]) end
local message = {v = 1, route = ARGV[4], origin = ARGV[3], kind = 'override', target = ARGV[5],
  mode = ARGV[2], seq = seq, epoch = epoch}
redis.call('publish', KEYS[2], cjson.encode(message))
return {1, epoch, seq}
"""
