-- Put a task back on its queue after the database moved it back to pending (lost worker, hand-back).
-- KEYS: active, owners, queue, wake
-- ARGV: task_id, priority, aging_band_us
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'NX', (10 - tonumber(ARGV[2])) * tonumber(ARGV[3]) + now_us, ARGV[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 9999)
return 1
