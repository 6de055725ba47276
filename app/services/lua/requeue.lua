-- Put a task back on its queue after the database moved it back to pending (lost worker, hand-back),
-- or after a claim lapsed before its start.
-- KEYS: active, owners, queue, wake
-- ARGV: task_id, priority, aging_band_us, token ('' = whoever holds the lease)
-- With a token, nothing happens while another token owns the lease: the sweeper read the task's
-- state before this call, and a start that committed meanwhile re-took the lease for a new
-- attempt, which must keep it (and must not find a second copy of its task in the queue).
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[4] ~= '' and owner ~= false and owner ~= ARGV[4] then
  return 0
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'NX', (10 - tonumber(ARGV[2])) * tonumber(ARGV[3]) + now_us, ARGV[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 9999)
return 1
