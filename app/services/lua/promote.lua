-- Move delayed tasks whose time has come onto their ready queues.
-- KEYS: delayed, active
-- ARGV: key_prefix, aging_band_us, limit
-- Queue keys are derived from the member because the set mixes task types (standalone Redis only).
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', math.floor(now_us / 1000), 'LIMIT', 0, tonumber(ARGV[3]))
local band = tonumber(ARGV[2])
for _, member in ipairs(due) do
  local task_type, priority, id = string.match(member, '^(%S+) (%S+) (%S+)$')
  redis.call('ZREM', KEYS[1], member)
  if not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', ARGV[1] .. ':queue:' .. task_type, 'NX', (10 - tonumber(priority)) * band + now_us, id)
    redis.call('LPUSH', ARGV[1] .. ':wake:' .. task_type, '1')
    redis.call('LTRIM', ARGV[1] .. ':wake:' .. task_type, 0, 9999)
  end
end
return #due
